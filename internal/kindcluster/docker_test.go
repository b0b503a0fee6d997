package kindcluster

import "testing"

func TestNodeIPOf(t *testing.T) {
	for conf, want := range map[string]string{
		// kind's template, before config patches
		"nodeRegistration:\n  kubeletExtraArgs:\n    node-ip: \"10.224.0.3\"\n": "10.224.0.3",
		// re-encoded by kind after patching; the first of init and join wins
		"kind: InitConfiguration\nnodeRegistration:\n  kubeletExtraArgs:\n    node-ip: 10.224.0.2\n---\nkind: JoinConfiguration\n    node-ip: 10.224.0.9\n": "10.224.0.2",
		// kubeadm v1beta4 (Kubernetes >= 1.36): kind's template, then re-encoded after patching
		"nodeRegistration:\n  kubeletExtraArgs:\n    - name: \"node-ip\"\n      value: \"10.228.0.3\"\n    - name: \"provider-id\"\n":             "10.228.0.3",
		"nodeRegistration:\n  kubeletExtraArgs:\n  - name: provider-id\n    value: kind://docker/x/y\n  - name: node-ip\n    value: 10.228.0.4\n": "10.228.0.4",
		"kind: ClusterConfiguration\n": "",
	} {
		if got := nodeIPOf([]byte(conf)); got != want {
			t.Errorf("nodeIPOf(%q) = %q, want %q", conf, got, want)
		}
	}
}
