package conformance

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"strconv"
)

// Images reads test/utils/image/manifest.go of the Kubernetes release under
// test and returns the reference (registry/name:version) the e2e framework
// gives each image ID (Agnhost, BusyBox, ...): its
// `configs[ID] = Config{list.<Registry>, "<name>", "<version>"}` with the
// registry's default from `initRegistry = RegistryList{...}`. The images
// built offline must carry exactly these names, or the kubelet would pull.
func Images(manifest string, src []byte, ids ...string) (map[string]string, error) {
	f, err := parser.ParseFile(token.NewFileSet(), manifest, src, parser.SkipObjectResolution)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", manifest, err)
	}
	registries := map[string]string{} // RegistryList field -> default
	configs := map[string][3]string{} // image ID -> registry field, name, version
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.ValueSpec:
			for i, name := range n.Names {
				if name.Name != "initRegistry" || i >= len(n.Values) {
					continue
				}
				lit, ok := n.Values[i].(*ast.CompositeLit)
				if !ok {
					continue
				}
				for _, e := range lit.Elts {
					kv, ok := e.(*ast.KeyValueExpr)
					if !ok {
						continue
					}
					k, ok := kv.Key.(*ast.Ident)
					if v, isString := stringLit(kv.Value); ok && isString {
						registries[k.Name] = v
					}
				}
			}
		case *ast.AssignStmt:
			if len(n.Lhs) != 1 || len(n.Rhs) != 1 {
				return true
			}
			idx, ok := n.Lhs[0].(*ast.IndexExpr)
			if !ok || !isIdent(idx.X, "configs") {
				return true
			}
			id, ok := idx.Index.(*ast.Ident)
			if !ok {
				return true
			}
			lit, ok := n.Rhs[0].(*ast.CompositeLit)
			if !ok || !isIdent(lit.Type, "Config") || len(lit.Elts) != 3 {
				return true
			}
			reg, ok := lit.Elts[0].(*ast.SelectorExpr)
			if !ok {
				return true
			}
			name, ok1 := stringLit(lit.Elts[1])
			version, ok2 := stringLit(lit.Elts[2])
			if ok1 && ok2 {
				configs[id.Name] = [3]string{reg.Sel.Name, name, version}
			}
		}
		return true
	})
	out := map[string]string{}
	for _, id := range ids {
		c, ok := configs[id]
		if !ok {
			return nil, fmt.Errorf("%s: no image %s (configs[%s] = Config{list.<registry>, <name>, <version>})", manifest, id, id)
		}
		reg, ok := registries[c[0]]
		if !ok || reg == "" {
			return nil, fmt.Errorf("%s: image %s names registry %s, which initRegistry does not set", manifest, id, c[0])
		}
		out[id] = reg + "/" + c[1] + ":" + c[2]
	}
	return out, nil
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

func stringLit(e ast.Expr) (string, bool) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(lit.Value)
	return s, err == nil
}
