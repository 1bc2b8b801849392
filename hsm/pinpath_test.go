package hsm_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestNoPINPassesThroughMiekgWrappers: miekg/pkcs11's Login, SetPIN,
// InitPIN and InitToken take the PIN as a Go string and copy it into
// C.CString memory that free(3) leaves intact; whether that copy survives
// depends on what the C heap does next, so a memory scan can miss it. The
// module calls C_Login and C_SetPIN through rawLib with the PIN in place
// instead, and this test keeps it so: no production file of package hsm
// but inittoken.go (development set-up, whose PINs are in files anyway)
// calls them, and nothing converts a PIN to a string.
func TestNoPINPassesThroughMiekgWrappers(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || f == "inittoken.go" {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		ast.Inspect(file, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			switch fn := call.Fun.(type) {
			case *ast.SelectorExpr:
				switch fn.Sel.Name {
				case "Login", "SetPIN", "InitPIN", "InitToken":
					t.Errorf("%s: %s calls %s: the PIN would be copied into the C heap (use rawLib)", fset.Position(call.Pos()), f, fn.Sel.Name)
				}
			case *ast.Ident:
				// string(pin), string(oldPIN), ...: a copy nobody zeroes.
				if fn.Name == "string" && len(call.Args) == 1 {
					if id, ok := call.Args[0].(*ast.Ident); ok && strings.Contains(strings.ToLower(id.Name), "pin") {
						t.Errorf("%s: string(%s) copies a PIN", fset.Position(call.Pos()), id.Name)
					}
				}
			}
			return true
		})
	}
	if checked < 10 {
		t.Fatalf("only %d files checked: run from the package directory", checked)
	}
}
