// Package report turns the conformance suites' results into what people
// read: truth tables (suites/reachability) printed as aligned grids with the
// mismatches marked and explained, a JUnit XML file for CI, and a
// self-contained HTML page with the grids in colour.
package report
