//go:build tools

// Package tools pins modules that tests and tooling of this repository use,
// so that go.mod lists them before the code that needs them lands.
package tools

import (
	_ "github.com/Shopify/toxiproxy/v2"
	_ "github.com/Shopify/toxiproxy/v2/client"
	_ "k8s.io/apimachinery/pkg/runtime/serializer"
)
