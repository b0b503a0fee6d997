// CoreDNS for the node image, with only the plugins a cluster can use offline.
// scripts/node-bin.sh builds main.go in a scratch module that requires
// github.com/coredns/coredns at the release kubeadm names (COREDNS_VERSION);
// this go.mod only keeps the file out of flatnet's own module.
module flatnet.local/node-image/coredns

go 1.25
