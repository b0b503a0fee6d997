// Package manifests holds the tests of the YAML that scripts/deploy.sh applies:
// that its objects decode strictly, refer to each other correctly (Services to
// pods and ports, the relay's config to its mounts and to the peer Service), and
// are accepted by a real kube-apiserver.
package manifests

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path"
	"regexp"
	"strconv"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/flatnet/flatnet/internal/apiservertest"
)

const relayNamespace = "flatnet-system"

// decodeStrict reads every document of file into typed objects, failing on an
// unknown or misspelt field (what kubectl's client-side dry run would pass
// with a warning only).
func decodeStrict(t *testing.T, file string) []runtime.Object {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	codec := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
		json.SerializerOptions{Yaml: true, Strict: true})
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []runtime.Object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("%s: reading a document: %v", file, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := codec.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v in\n%s", file, err, doc)
		}
		objs = append(objs, obj)
	}
}

// relayObjects are the objects of hubble-relay.yaml, one of each kind and name.
type relayObjects struct {
	relaySvc, peerSvc *corev1.Service
	config            map[string]any
	deploy            *appsv1.Deployment
	sa                *corev1.ServiceAccount
}

func loadRelay(t *testing.T) relayObjects {
	t.Helper()
	var o relayObjects
	for _, obj := range decodeStrict(t, "hubble-relay.yaml") {
		m, err := meta.Accessor(obj)
		if err != nil {
			t.Fatal(err)
		}
		if m.GetNamespace() != relayNamespace {
			t.Errorf("%T %s is in namespace %q, want %s", obj, m.GetName(), m.GetNamespace(), relayNamespace)
		}
		switch v := obj.(type) {
		case *corev1.Service:
			switch v.Name {
			case "hubble-relay":
				o.relaySvc = v
			case "hubble-peer":
				o.peerSvc = v
			}
		case *corev1.ConfigMap:
			if v.Name == "hubble-relay-config" {
				if err := yaml.UnmarshalStrict([]byte(v.Data["config.yaml"]), &o.config); err != nil {
					t.Fatalf("ConfigMap hubble-relay-config: config.yaml: %v", err)
				}
			}
		case *appsv1.Deployment:
			o.deploy = v
		case *corev1.ServiceAccount:
			o.sa = v
		}
	}
	if o.relaySvc == nil || o.peerSvc == nil || o.config == nil || o.deploy == nil || o.sa == nil {
		t.Fatalf("hubble-relay.yaml lacks an object: Service hubble-relay %v, Service hubble-peer %v, ConfigMap hubble-relay-config %v, Deployment %v, ServiceAccount %v",
			o.relaySvc != nil, o.peerSvc != nil, o.config != nil, o.deploy != nil, o.sa != nil)
	}
	return o
}

// The relay is reached as Cilium's is (Service hubble-relay, port 80) on the
// port its config listens on, and only in plaintext there.
func TestRelayServiceReachesTheRelaysListener(t *testing.T) {
	o := loadRelay(t)
	pod := o.deploy.Spec.Template
	if sel := labels.SelectorFromSet(o.relaySvc.Spec.Selector); o.relaySvc.Spec.Selector == nil || !sel.Matches(labels.Set(pod.Labels)) {
		t.Errorf("Service hubble-relay selects %v, the relay's pods are labelled %v", o.relaySvc.Spec.Selector, pod.Labels)
	}
	if len(o.relaySvc.Spec.Ports) != 1 || o.relaySvc.Spec.Ports[0].Port != 80 {
		t.Fatalf("Service hubble-relay ports %+v, want one, port 80 (Cilium's plaintext relay Service)", o.relaySvc.Spec.Ports)
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("the relay pod has %d containers, want 1", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	target := o.relaySvc.Spec.Ports[0].TargetPort
	var targetNum int32
	for _, p := range c.Ports {
		if (target.StrVal != "" && p.Name == target.StrVal) || (target.StrVal == "" && p.ContainerPort == target.IntVal) {
			targetNum = p.ContainerPort
		}
	}
	if targetNum == 0 {
		t.Fatalf("Service hubble-relay's targetPort %s is no port of container %s (%+v)", target.String(), c.Name, c.Ports)
	}
	if got := portOf(t, "listen-address", o.config["listen-address"]); got != targetNum {
		t.Errorf("the relay listens on %d (listen-address), Service hubble-relay sends to %d", got, targetNum)
	}
	if o.config["disable-server-tls"] != true {
		t.Errorf("disable-server-tls = %v: the relay's in-cluster port is plaintext, as Cilium's with hubble.relay.tls.server.enabled=false", o.config["disable-server-tls"])
	}
	if o.config["disable-client-tls"] == true {
		t.Error("disable-client-tls is set: the relay must dial the agents with mutual TLS")
	}
	// The probes ask the relay's gRPC health service: on the default
	// health-listen-address (:4222) unless the config moves it.
	health := int32(4222)
	if a, ok := o.config["health-listen-address"]; ok {
		health = portOf(t, "health-listen-address", a)
	}
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe} {
		if p == nil || p.GRPC == nil || p.GRPC.Port != health {
			t.Errorf("%s probe %+v, want gRPC health on port %d", name, p, health)
		}
	}
	if len(c.Command) != 1 || c.Command[0] != "hubble-relay" || len(c.Args) != 1 || c.Args[0] != "serve" {
		t.Errorf("the relay runs %v %v, want hubble-relay serve (the chart's command; the image has it on PATH)", c.Command, c.Args)
	}
	if c.Image != "@RELAY_IMAGE@" {
		t.Errorf("the relay's image is %q, want @RELAY_IMAGE@ (scripts/deploy.sh puts the image relay-image.sh built there)", c.Image)
	}
}

// The relay finds the agents as Cilium's does: its peer-service is Service
// hubble-peer, which sends to every agent's :4244 on the relay's own node.
func TestRelayPeerServiceIsTheAgents(t *testing.T) {
	o := loadRelay(t)
	host, port, err := net.SplitHostPort(o.config["peer-service"].(string))
	if err != nil {
		t.Fatalf("peer-service %q: %v", o.config["peer-service"], err)
	}
	if want := o.peerSvc.Name + "." + o.peerSvc.Namespace + ".svc.cluster.local."; host != want {
		t.Errorf("peer-service host %q, want %q (the Service's fully qualified name)", host, want)
	}
	if len(o.peerSvc.Spec.Ports) != 1 {
		t.Fatalf("Service hubble-peer ports %+v, want one", o.peerSvc.Spec.Ports)
	}
	sp := o.peerSvc.Spec.Ports[0]
	if strconv.Itoa(int(sp.Port)) != port || sp.Port != 443 {
		t.Errorf("peer-service port %s, Service hubble-peer port %d: want both 443 (Cilium's, with TLS)", port, sp.Port)
	}
	if sp.TargetPort.IntVal != 4244 {
		t.Errorf("Service hubble-peer targets %s, want 4244 (where the agents serve Peer and Observer)", sp.TargetPort.String())
	}
	if p := o.peerSvc.Spec.InternalTrafficPolicy; p == nil || *p != corev1.ServiceInternalTrafficPolicyLocal {
		t.Errorf("Service hubble-peer internalTrafficPolicy %v, want Local (as Cilium's)", p)
	}
	if name, ok := o.config["cluster-name"].(string); !ok || name != "default" {
		t.Errorf("cluster-name %v, want default: the cluster flatnet's endpoints report, and the name the agents' certificates carry (<node>.default.hubble-grpc.cilium.io)", o.config["cluster-name"])
	}

	// The agents' pods, from agent.yaml: the peer Service selects them and
	// the relay runs beside one.
	var agent *appsv1.DaemonSet
	for _, obj := range decodeStrict(t, "agent.yaml") {
		if ds, ok := obj.(*appsv1.DaemonSet); ok && ds.Name == "flatnet-agent" {
			agent = ds
		}
	}
	if agent == nil {
		t.Fatal("agent.yaml has no DaemonSet flatnet-agent")
	}
	if agent.Namespace != o.peerSvc.Namespace {
		t.Errorf("the agents run in %s, Service hubble-peer is in %s", agent.Namespace, o.peerSvc.Namespace)
	}
	agentLabels := labels.Set(agent.Spec.Template.Labels)
	if o.peerSvc.Spec.Selector == nil || !labels.SelectorFromSet(o.peerSvc.Spec.Selector).Matches(agentLabels) {
		t.Errorf("Service hubble-peer selects %v, the agents' pods are labelled %v", o.peerSvc.Spec.Selector, agentLabels)
	}
	if !agent.Spec.Template.Spec.HostNetwork {
		t.Error("the agents are not host-network: Service hubble-peer's targetPort 4244 would not be their node's :4244, which the peers announce")
	}
	aff := o.deploy.Spec.Template.Spec.Affinity
	if aff == nil || aff.PodAffinity == nil || len(aff.PodAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 1 {
		t.Fatalf("the relay has no required pod affinity to an agent: with internalTrafficPolicy Local it needs one on its node")
	}
	term := aff.PodAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0]
	sel, err := metav1.LabelSelectorAsSelector(term.LabelSelector)
	if err != nil || term.TopologyKey != corev1.LabelHostname || !sel.Matches(agentLabels) {
		t.Errorf("the relay's pod affinity (%s on %s, %v) does not put it on a node with an agent %v", term.LabelSelector, term.TopologyKey, err, agentLabels)
	}
}

// The relay's TLS files are the client certificate Secret's keys, mounted
// where its config reads them, as the chart mounts them.
func TestRelayTLSFilesComeFromTheClientCertSecret(t *testing.T) {
	o := loadRelay(t)
	spec := o.deploy.Spec.Template.Spec
	mounts := map[string]string{} // mount path -> volume
	for _, m := range spec.Containers[0].VolumeMounts {
		mounts[m.MountPath] = m.Name
		if !m.ReadOnly {
			t.Errorf("volume %s is mounted writable", m.Name)
		}
	}
	// volume -> file name in it -> Secret/ConfigMap key
	files := map[string]map[string]string{}
	for _, v := range spec.Volumes {
		files[v.Name] = map[string]string{}
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.Secret == nil {
					continue
				}
				for _, it := range s.Secret.Items {
					files[v.Name][it.Path] = s.Secret.Name + "/" + it.Key
				}
			}
		}
		if v.ConfigMap != nil {
			for _, it := range v.ConfigMap.Items {
				files[v.Name][it.Path] = v.ConfigMap.Name + "/" + it.Key
			}
		}
	}
	wantKey := map[string]string{
		"tls-hubble-client-cert-file": "hubble-relay-client-certs/tls.crt",
		"tls-hubble-client-key-file":  "hubble-relay-client-certs/tls.key",
		"tls-hubble-server-ca-files":  "hubble-relay-client-certs/ca.crt",
	}
	for opt, want := range wantKey {
		file, ok := o.config[opt].(string)
		if !ok || file == "" {
			t.Errorf("config.yaml has no %s", opt)
			continue
		}
		vol, ok := mounts[path.Dir(file)]
		if !ok {
			t.Errorf("%s %s: no volume is mounted at %s", opt, file, path.Dir(file))
			continue
		}
		if got := files[vol][path.Base(file)]; got != want {
			t.Errorf("%s %s is %q of volume %s, want Secret key %s", opt, file, got, vol, want)
		}
	}
	// The config file itself: /etc/hubble-relay/config.yaml is where
	// hubble-relay reads it (hubble-relay/cmd/root.go).
	if vol, ok := mounts["/etc/hubble-relay"]; !ok || files[vol]["config.yaml"] != "hubble-relay-config/config.yaml" {
		t.Errorf("/etc/hubble-relay/config.yaml is not ConfigMap hubble-relay-config's config.yaml (mounts %v)", mounts)
	}
}

// Every @PLACEHOLDER@ in the manifests deploy.sh applies is one it fills in.
func TestDeployFillsEveryPlaceholder(t *testing.T) {
	script, err := os.ReadFile("../../scripts/deploy.sh")
	if err != nil {
		t.Fatal(err)
	}
	filled := map[string]bool{}
	for _, m := range regexp.MustCompile(`s\|(@[A-Z_]+@)\|`).FindAllSubmatch(script, -1) {
		filled[string(m[1])] = true
	}
	for _, f := range []string{"agent.yaml", "hubble-relay.yaml"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range regexp.MustCompile(`@[A-Z_]+@`).FindAll(data, -1) {
			if !filled[string(p)] {
				t.Errorf("%s uses %s, which scripts/deploy.sh does not fill in (it fills %v)", f, p, filled)
			}
		}
	}
}

// A real kube-apiserver accepts every object of hubble-relay.yaml with strict
// field validation (server-side dry run after the namespace exists).
func TestRelayManifestOnAPIServer(t *testing.T) {
	dir := apiservertest.Require(t)
	dyn, stop, err := apiservertest.Start(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stop() })
	ctx := context.Background()
	ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": relayNamespace}}}
	if _, err := dyn.Resource(corev1.SchemeGroupVersion.WithResource("namespaces")).Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	resources := map[string]string{"ServiceAccount": "serviceaccounts", "Service": "services", "ConfigMap": "configmaps", "Deployment": "deployments"}
	data, err := os.ReadFile("hubble-relay.yaml")
	if err != nil {
		t.Fatal(err)
	}
	data = bytes.ReplaceAll(data, []byte("@RELAY_IMAGE@"), []byte("flatnet/hubble-relay:test"))
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	n := 0
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil || obj == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		gv, err := schema.ParseGroupVersion(u.GetAPIVersion())
		if err != nil {
			t.Fatal(err)
		}
		res, ok := resources[u.GetKind()]
		if !ok {
			t.Fatalf("hubble-relay.yaml has a %s: add its resource to this test", u.GetKind())
		}
		_, err = dyn.Resource(gv.WithResource(res)).Namespace(u.GetNamespace()).Create(ctx, u,
			metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: metav1.FieldValidationStrict})
		if err != nil {
			t.Errorf("%s %s: the API server refuses it: %v", u.GetKind(), u.GetName(), err)
		}
		n++
	}
	if n != 5 {
		t.Errorf("sent %d objects, hubble-relay.yaml has 5 (ServiceAccount, 2 Services, ConfigMap, Deployment)", n)
	}
}

// portOf is the port of a listen address such as ":4245".
func portOf(t *testing.T, what string, addr any) int32 {
	t.Helper()
	s, _ := addr.(string)
	_, p, err := net.SplitHostPort(s)
	if err != nil {
		t.Fatalf("%s %v: %v", what, addr, err)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		t.Fatalf("%s %v: port: %v", what, addr, err)
	}
	return int32(n)
}
