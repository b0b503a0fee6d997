package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/flatnet/flatnet/fixtures/oracle"
)

// document is one YAML document of a manifest file, named for errors.
type document struct {
	file  string
	index int // 1-based position in the file
	line  int // line of the file the document starts on
	item  int // with inList: the index of the item in the document's List
	// inList: the document is one item of a v1 List document.
	inList bool
	data   []byte
}

func (d document) String() string {
	s := fmt.Sprintf("%s: document %d (line %d)", d.file, d.index, d.line)
	if d.inList {
		s += fmt.Sprintf(" items[%d]", d.item)
	}
	return s
}

// readDocuments splits a manifest file into its YAML documents ("---" lines,
// as kubectl splits them), keeping each one's position for error messages.
// Documents holding only comments or blanks are dropped.
func readDocuments(file string) ([]document, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	var docs []document
	cur := document{file: file, index: 1, line: 1}
	var buf bytes.Buffer
	flush := func() {
		if hasContent(buf.Bytes()) {
			cur.data = slices.Clone(buf.Bytes())
			docs = append(docs, cur)
		}
		buf.Reset()
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), len(data)+1)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "---" || strings.HasPrefix(line, "--- ") || strings.HasPrefix(line, "---\t") {
			flush()
			cur = document{file: file, index: cur.index + 1, line: n + 1}
			continue
		}
		buf.WriteString(line)
		buf.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	flush()
	return docs, nil
}

func hasContent(doc []byte) bool {
	for _, l := range strings.Split(string(doc), "\n") {
		if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
			return true
		}
	}
	return false
}

// decodeStrict reads a YAML or JSON document into v as the API server would
// with strict field validation: an unknown or duplicated field is an error
// naming its full path (spec.ingress[0].from[0].podSelector.matchLabel).
func decodeStrict(doc document, v any) error {
	js, err := toJSON(doc)
	if err != nil {
		return err
	}
	return decodeStrictJSON(doc.String(), js, v)
}

// yamlLine is how go-yaml places a syntax error: on a line of the document.
var yamlLine = regexp.MustCompile(`yaml: line (\d+):`)

// toJSON converts a document; a syntax error names the line of the file,
// not of the document.
func toJSON(doc document) ([]byte, error) {
	js, err := yaml.YAMLToJSON(doc.data)
	if err == nil {
		return js, nil
	}
	msg := yamlLine.ReplaceAllStringFunc(err.Error(), func(m string) string {
		n, _ := strconv.Atoi(yamlLine.FindStringSubmatch(m)[1])
		return fmt.Sprintf("yaml: line %d:", doc.line+n-1)
	})
	return nil, fmt.Errorf("%s: not YAML or JSON: %s", doc, msg)
}

// decodeStrictJSON is decodeStrict for JSON; where names the object in errors.
func decodeStrictJSON(where string, js []byte, v any) error {
	strict, err := sigsjson.UnmarshalStrict(js, v)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	if len(strict) > 0 {
		return fmt.Errorf("%s: %w", where, errors.Join(strict...))
	}
	return nil
}

// subsetHint says why a Cilium field is unknown: the oracle's types hold
// only the modelled subset.
func subsetHint(err error, kind string) error {
	if strings.Contains(err.Error(), "unknown field") {
		return fmt.Errorf("%w (only the subset of %s in dataplane/POLICY.md is modelled)", err, kind)
	}
	return err
}

// typeOf reads a document's apiVersion and kind.
func typeOf(doc document) (metav1.TypeMeta, error) {
	var tm metav1.TypeMeta
	js, err := toJSON(doc)
	if err != nil {
		return tm, err
	}
	if err := yaml.Unmarshal(js, &tm); err != nil {
		return tm, fmt.Errorf("%s: apiVersion and kind: %w", doc, err)
	}
	return tm, nil
}

// readManifests reads a file's documents with every v1 List (what `kubectl
// get -o yaml` prints) replaced by its items.
func readManifests(file string) ([]document, error) {
	docs, err := readDocuments(file)
	if err != nil {
		return nil, err
	}
	var out []document
	for _, d := range docs {
		tm, err := typeOf(d)
		if err != nil {
			return nil, err
		}
		if tm.APIVersion != "v1" || tm.Kind != "List" {
			out = append(out, d)
			continue
		}
		items, err := listItems(d)
		if err != nil {
			return nil, err
		}
		out = append(out, items...)
	}
	return out, nil
}

// listItems splits a v1 List (what `kubectl get -o yaml` prints) into
// documents of its own file position, item by item.
func listItems(doc document) ([]document, error) {
	var list struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        map[string]any `json:"metadata,omitempty"`
		Items           []any          `json:"items"`
	}
	if err := decodeStrict(doc, &list); err != nil {
		return nil, err
	}
	var out []document
	for i, it := range list.Items {
		data, err := yaml.Marshal(it)
		if err != nil {
			return nil, fmt.Errorf("%s: items[%d]: %w", doc, i, err)
		}
		item := doc
		item.item, item.inList, item.data = i, true, data
		out = append(out, item)
	}
	return out, nil
}

// loadedPolicies are the policies of the -f files, each validated on its own.
type loadedPolicies struct {
	set    oracle.PolicySet
	origin map[oracle.PolicyRef]string // where each policy was read
}

func newLoadedPolicies() *loadedPolicies {
	return &loadedPolicies{origin: map[oracle.PolicyRef]string{}}
}

// add validates one policy on its own (the oracle names the field at fault)
// and records it; a policy defined twice in the files is an error naming both.
func (l *loadedPolicies) add(where string, np *networkingv1.NetworkPolicy, cp *oracle.CiliumPolicy) error {
	var one oracle.PolicySet
	var ref oracle.PolicyRef
	if np != nil {
		one.NetworkPolicies = []networkingv1.NetworkPolicy{*np}
		ref = oracle.PolicyRef{Kind: oracle.KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name}
	} else {
		one.CiliumPolicies = []oracle.CiliumPolicy{*cp}
		ref = cp.Ref()
	}
	if _, err := oracle.New(oracle.Cluster{}, one); err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	if prev, ok := l.origin[ref]; ok {
		return fmt.Errorf("%s: %s is already defined in %s", where, ref, prev)
	}
	l.origin[ref] = where
	l.set.NetworkPolicies = append(l.set.NetworkPolicies, one.NetworkPolicies...)
	l.set.CiliumPolicies = append(l.set.CiliumPolicies, one.CiliumPolicies...)
	return nil
}

// loadPolicyPaths reads every -f path: a file, or a directory walked for
// *.yaml, *.yml and *.json. The first bad document stops the load.
func loadPolicyPaths(paths []string) (*loadedPolicies, error) {
	l := newLoadedPolicies()
	for _, p := range paths {
		files, err := manifestFiles(p)
		if err != nil {
			return nil, fmt.Errorf("-f %s: %w", p, err)
		}
		for _, f := range files {
			docs, err := readManifests(f)
			if err != nil {
				return nil, err
			}
			for _, d := range docs {
				if err := l.addDocument(d); err != nil {
					return nil, err
				}
			}
		}
	}
	return l, nil
}

// manifestFiles is p itself when it is a file, else the manifests under it
// in lexical order; a directory without any is an error (a wrong path, most
// likely).
func manifestFiles(p string) ([]string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return []string{p}, nil
	}
	var files []string
	err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch strings.ToLower(filepath.Ext(path)) {
		case ".yaml", ".yml", ".json":
			if !d.IsDir() {
				files = append(files, path)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no *.yaml, *.yml or *.json file in the directory")
	}
	return files, nil
}

// apiNetworking is NetworkPolicy's group and version.
const apiNetworking = "networking.k8s.io/v1"

func (l *loadedPolicies) addDocument(d document) error {
	tm, err := typeOf(d)
	if err != nil {
		return err
	}
	switch {
	case tm.Kind == string(oracle.KindNetworkPolicy) && tm.APIVersion == apiNetworking:
		var np networkingv1.NetworkPolicy
		if err := decodeStrict(d, &np); err != nil {
			return err
		}
		if np.Namespace == "" {
			np.Namespace = metav1.NamespaceDefault // as `kubectl apply -f` does
		}
		return l.add(d.String(), &np, nil)
	case (tm.Kind == string(oracle.KindCNP) || tm.Kind == string(oracle.KindCCNP)) && tm.APIVersion == oracle.CiliumAPIVersion:
		var cp oracle.CiliumPolicy
		if err := decodeStrict(d, &cp); err != nil {
			return subsetHint(err, tm.Kind)
		}
		if cp.Kind == oracle.KindCNP && cp.Metadata.Namespace == "" {
			cp.Metadata.Namespace = metav1.NamespaceDefault
		}
		return l.add(d.String(), nil, &cp)
	case tm.Kind == "Pod" || tm.Kind == "Namespace" || tm.Kind == "Node":
		return fmt.Errorf("%s: a %s is not a policy; give pods and namespaces with --pods", d, tm.Kind)
	}
	return fmt.Errorf("%s: apiVersion %q kind %q is not a policy flatnet models; use %s NetworkPolicy or %s CiliumNetworkPolicy/CiliumClusterwideNetworkPolicy",
		d, tm.APIVersion, tm.Kind, apiNetworking, oracle.CiliumAPIVersion)
}

// override puts the policies of files over base (the cluster's): one with
// the same kind, namespace and name replaces the cluster's.
func (l *loadedPolicies) override(base oracle.PolicySet) oracle.PolicySet {
	var out oracle.PolicySet
	for _, np := range base.NetworkPolicies {
		if _, ok := l.origin[oracle.PolicyRef{Kind: oracle.KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name}]; !ok {
			out.NetworkPolicies = append(out.NetworkPolicies, np)
		}
	}
	for _, cp := range base.CiliumPolicies {
		if _, ok := l.origin[cp.Ref()]; !ok {
			out.CiliumPolicies = append(out.CiliumPolicies, cp)
		}
	}
	out.NetworkPolicies = append(out.NetworkPolicies, l.set.NetworkPolicies...)
	out.CiliumPolicies = append(out.CiliumPolicies, l.set.CiliumPolicies...)
	return out
}
