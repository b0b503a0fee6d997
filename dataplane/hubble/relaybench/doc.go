// Package relaybench measures what Hubble's relay costs over reading one agent
// directly: its benchmark runs the upstream hubble-relay binary against three
// in-process agents (flatnet's Observer, Peer and gRPC server on loopback) and
// reads flows through the relay and straight from one agent in the same run,
// reporting both and their ratio. It holds no code of its own: the agents are
// the real packages, the relay the real program, the client the upstream
// generated one. scripts/bench-hubble.sh builds the relay and runs it.
package relaybench
