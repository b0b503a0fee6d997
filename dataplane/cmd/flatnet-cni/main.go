// Command flatnet is the flatnet CNI plugin (installed as /opt/cni/bin/flatnet
// by the node agent). All logic lives in dataplane/cni.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/flatnet/flatnet/dataplane/cni"
)

func main() {
	skel.PluginMainFuncs(cni.Funcs(), cni.SupportedVersions, cni.About)
}
