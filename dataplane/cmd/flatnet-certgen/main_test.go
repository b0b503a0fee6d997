package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/flatnet/flatnet/internal/apiservertest"
)

// TestRunsWithTheManifestsRBAC runs the command as the CronJob does: as the
// flatnet-certgen ServiceAccount, with exactly the Role of agent.yaml, against a
// real kube-apiserver (which enforces RBAC). It must create and then keep the
// Secrets, and be refused every other Secret.
func TestRunsWithTheManifestsRBAC(t *testing.T) {
	env := &envtest.Environment{BinaryAssetsDirectory: apiservertest.Require(t)}
	rc, err := env.Start()
	if err != nil {
		t.Fatalf("start kube-apiserver and etcd: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	admin := kubernetes.NewForConfigOrDie(rc)
	ctx := context.Background()
	for _, ns := range []string{"flatnet-system", "kube-public"} {
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	applyCertgenRBAC(t, admin)
	if _, err := admin.CoreV1().Secrets("flatnet-system").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "someone-elses"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	sa, err := env.AddUser(envtest.User{
		Name:   "system:serviceaccount:flatnet-system:flatnet-certgen",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:flatnet-system", "system:authenticated"},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := sa.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}

	run := func() string {
		t.Helper()
		var out bytes.Buffer
		cmd := command()
		cmd.SetOut(&out)
		cmd.SetArgs([]string{"--kubeconfig", kubeconfig, "--namespace", "flatnet-system"})
		if err := cmd.Execute(); err != nil {
			t.Fatalf("flatnet-certgen as its ServiceAccount: %v\n%s", err, out.String())
		}
		return out.String()
	}
	for i, want := range []string{"created", "kept"} {
		out := run()
		if n := strings.Count(out, ": "+want+" ("); n != 3 {
			t.Errorf("run %d: want 3 Secrets %s, got:\n%s", i+1, want, out)
		}
	}

	rcSA, err := clientcmd.RESTConfigFromKubeConfig(kc)
	if err != nil {
		t.Fatal(err)
	}
	asSA := kubernetes.NewForConfigOrDie(rcSA)
	if _, err := asSA.CoreV1().Secrets("flatnet-system").Get(ctx, "someone-elses", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("reading another Secret of flatnet-system: %v, want Forbidden", err)
	}
	if _, err := asSA.CoreV1().Secrets("flatnet-system").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("listing the Secrets of flatnet-system: %v, want Forbidden", err)
	}
	if _, err := asSA.CoreV1().Secrets("kube-public").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "hubble-ca"}}, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("creating a Secret in another namespace: %v, want Forbidden", err)
	}
}

// applyCertgenRBAC creates flatnet-certgen's ServiceAccount, Role and RoleBinding
// as dataplane/manifests/agent.yaml defines them.
func applyCertgenRBAC(t *testing.T, kube kubernetes.Interface) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "manifests", "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	found := 0
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var meta metav1.PartialObjectMetadata
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("agent.yaml: %v", err)
		}
		if meta.Name != "flatnet-certgen" {
			continue
		}
		switch meta.Kind {
		case "ServiceAccount":
			var o corev1.ServiceAccount
			err = yaml.UnmarshalStrict([]byte(doc), &o)
			if err == nil {
				_, err = kube.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
			}
		case "Role":
			var o rbacv1.Role
			err = yaml.UnmarshalStrict([]byte(doc), &o)
			if err == nil {
				_, err = kube.RbacV1().Roles(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
			}
		case "RoleBinding":
			var o rbacv1.RoleBinding
			err = yaml.UnmarshalStrict([]byte(doc), &o)
			if err == nil {
				_, err = kube.RbacV1().RoleBindings(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
			}
		default:
			continue
		}
		if err != nil {
			t.Fatalf("agent.yaml's %s flatnet-certgen: %v", meta.Kind, err)
		}
		found++
	}
	if found != 3 {
		t.Fatalf("agent.yaml: %d of flatnet-certgen's ServiceAccount, Role and RoleBinding", found)
	}
}
