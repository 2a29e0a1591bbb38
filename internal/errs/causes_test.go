package errs

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// site is a place in the source that makes an *Error with a constant
// code: "path: literal", where literal is the first string literal of
// its detail (errs.New's format, errs.Wrap's context, an Error literal's
// Detail), or the detail's expression when it has none.
type site struct {
	code Code
	key  string
}

// codeSites finds, by parsing every non-test Go file of the module outside
// this package, each errs.New(errs.CodeX, ...), errs.Wrap(errs.CodeX, ...)
// and composite literal with `Code: errs.CodeX`.
func codeSites(t *testing.T) []site {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Code{}
	for _, c := range Codes() {
		byName[codeName(t, c)] = c
	}
	var sites []site
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if rel == "internal/errs" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".") && rel != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		code := func(e ast.Expr) (Code, bool) {
			sel, ok := e.(*ast.SelectorExpr)
			if !ok {
				return 0, false
			}
			if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "errs" {
				return 0, false
			}
			c, ok := byName[sel.Sel.Name]
			if !ok && strings.HasPrefix(sel.Sel.Name, "Code") {
				t.Errorf("%s: %s is not a catalogued code", rel, sel.Sel.Name)
			}
			return c, ok
		}
		add := func(c Code, detail ast.Expr) {
			sites = append(sites, site{c, rel + ": " + literal(detail)})
		}
		ast.Inspect(src, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CallExpr:
				sel, ok := n.Fun.(*ast.SelectorExpr)
				if !ok || len(n.Args) < 2 {
					return true
				}
				if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "errs" {
					return true
				}
				c, ok := code(n.Args[0])
				switch {
				case !ok:
				case sel.Sel.Name == "New":
					add(c, n.Args[1])
				case sel.Sel.Name == "Wrap" && len(n.Args) == 3:
					add(c, n.Args[2])
				}
			case *ast.CompositeLit:
				var c Code
				var detail ast.Expr
				found := false
				for _, el := range n.Elts {
					kv, ok := el.(*ast.KeyValueExpr)
					if !ok {
						continue
					}
					switch k, _ := kv.Key.(*ast.Ident); {
					case k == nil:
					case k.Name == "Code":
						c, found = code(kv.Value)
					case k.Name == "Detail":
						detail = kv.Value
					}
				}
				if found {
					add(c, detail)
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sites) < 20 {
		t.Fatalf("found only %d sites: is the module root %s?", len(sites), root)
	}
	return sites
}

// literal returns the first string literal in e, or e's identifiers.
func literal(e ast.Expr) string {
	if e == nil {
		return ""
	}
	var lit string
	var idents []string
	ast.Inspect(e, func(n ast.Node) bool {
		if lit != "" {
			return false
		}
		switch n := n.(type) {
		case *ast.BasicLit:
			if n.Kind == token.STRING {
				lit, _ = strconv.Unquote(n.Value)
			}
		case *ast.Ident:
			idents = append(idents, n.Name)
		}
		return true
	})
	if lit != "" {
		return lit
	}
	return strings.Join(idents, ".")
}

// codeName maps a code to its constant's name in this package.
func codeName(t *testing.T, c Code) string {
	for name, v := range map[string]Code{
		"CodeGuestDenied": CodeGuestDenied, "CodeVPNExists": CodeVPNExists, "CodeInvalidFD": CodeInvalidFD,
		"CodeInvalidParam": CodeInvalidParam, "CodeInternal": CodeInternal, "CodePermission": CodePermission,
		"CodeParse": CodeParse, "CodeInvalidRequest": CodeInvalidRequest, "CodeMethodNotFound": CodeMethodNotFound,
	} {
		if v == c {
			return name
		}
	}
	t.Fatalf("code %d has no constant", c)
	return ""
}

// TestEveryAnswerHasACause: each place in the source that answers a code
// with a fixed detail has its cause listed in causes, as often as it
// occurs, and every listed place exists. A new errs.New(errs.CodeX, ...)
// without its cause fails here.
func TestEveryAnswerHasACause(t *testing.T) {
	found := map[site]int{}
	for _, s := range codeSites(t) {
		found[s]++
	}
	listed := map[site]int{}
	for code, cs := range causes {
		if _, ok := Lookup(code); !ok {
			t.Errorf("causes of %d: not a catalogued code", code)
		}
		for _, c := range cs {
			if c.Text == "" || strings.HasSuffix(c.Text, " ") {
				t.Errorf("%d: a cause without text: %+v", code, c)
			}
			for _, k := range c.Sites {
				listed[site{code, k}]++
			}
		}
	}
	for s, n := range found {
		if listed[s] != n {
			t.Errorf("%d %q occurs %d times in the source, listed %d times in causes: say when vpnd answers it", s.code, s.key, n, listed[s])
		}
	}
	for s, n := range listed {
		if found[s] == 0 {
			t.Errorf("%d %q listed %d times in causes, not in the source", s.code, s.key, n)
		}
	}
	for _, c := range Codes() {
		if len(Causes(c)) == 0 {
			t.Errorf("%d: no causes", c)
		}
	}
}

func TestUnsent(t *testing.T) {
	for _, c := range []Code{-32602, -32603} {
		u, ok := LookupUnsent(c)
		if !ok || u.Code != c || u.Name == "" || !strings.Contains(u.Instead, "never sends") {
			t.Errorf("%d: %+v %v", c, u, ok)
		}
		if _, ok := Lookup(c); ok {
			t.Errorf("%d is catalogued: vpnd would send it", c)
		}
	}
	if _, ok := LookupUnsent(CodeInternal); ok {
		t.Error("19900002 is not unsent")
	}
}
