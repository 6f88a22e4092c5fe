// Parses every PEM certificate named on the command line with Go's crypto/x509, the parser OSM's
// control plane (and most of the Kubernetes ecosystem) uses, and prints one line per file:
// "ok <file> <SAN URIs>" or "error <file> <reason>". Exits 1 if any failed.
package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

func main() {
	failed := false
	for _, path := range os.Args[1:] {
		data, err := os.ReadFile(path)
		if err != nil {
			fmt.Printf("error %s %v\n", path, err)
			failed = true
			continue
		}
		block, _ := pem.Decode(data)
		if block == nil || block.Type != "CERTIFICATE" {
			fmt.Printf("error %s not a PEM certificate\n", path)
			failed = true
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			fmt.Printf("error %s %v\n", path, err)
			failed = true
			continue
		}
		fmt.Printf("ok %s %v\n", path, cert.URIs)
	}
	if failed {
		os.Exit(1)
	}
}
