// Package controllers stands in for sigs.k8s.io/mcs-api/controllers v0.5.2,
// which the Go module proxy reachable here does not serve. Cilium v1.20.2
// imports it for one name only: the ServiceImport annotation that names the
// Service derived from it (KEP-1645, the Multi-Cluster Services API). This
// package declares that name and nothing else; no code of the upstream module
// is copied. The MCS-API controllers that read it run only with ClusterMesh,
// which cilium-ref does not enable.
package controllers

// DerivedServiceAnnotation is the annotation on a ServiceImport whose value is
// the name of the Service derived from it.
const DerivedServiceAnnotation = "multicluster.kubernetes.io/derived-service"
