// Package ca holds the mesh CA's certificate logic: it generates roots and intermediates,
// reads and writes the material of istiod's `cacerts` Secret, builds trust bundles for root
// rotation, and checks user-provided material before istiod ever sees it.
//
// It is pure: no Kubernetes client, no clock (every function takes the current time as a
// value), and no logging. Private keys never appear in its errors or in the String, GoString,
// JSON or log forms of its types.
package ca
