// Package chart tests charts/capstan, the operator's own Helm chart: chart_test.go renders it
// with the Helm v4 SDK and checks the objects with no cluster (go test ./test/chart);
// chart_e2e_test.go (build tag e2e) installs it on a local kwok cluster and runs the
// operator with the chart's identity.
package chart
