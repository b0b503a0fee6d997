// A stand-in for sigs.k8s.io/mcs-api/controllers, which the Go module proxy
// reachable here refuses (403 for every version). Cilium's operator uses one
// name from it; see controllers.go.
module sigs.k8s.io/mcs-api/controllers

go 1.23
