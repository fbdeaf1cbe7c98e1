package spec

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/typeexpr"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

// Vars are the variable values given outside the file, lowest precedence
// first: environment (PROVISION_VAR_name), -var-file files in order, -var
// arguments in order. Later values win, as in Terraform.
type Vars struct {
	Args  []string // "name=value" from -var
	Files []string // paths from -var-file
	Env   []string // os.Environ()
}

// EnvPrefix is the environment prefix for variable values.
const EnvPrefix = "PROVISION_VAR_"

// variable is one declared `variable "name" { }` block.
type variable struct {
	Name    string
	Type    cty.Type
	Typed   bool
	Default cty.Value
	HasDef  bool
	Range   hcl.Range
}

var variableSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "default"},
		{Name: "type"},
		{Name: "description"},
		{Name: "sensitive"},
	},
}

// decodeVariables reads the variable blocks of every file.
func decodeVariables(blocks hcl.Blocks) (map[string]*variable, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	vars := map[string]*variable{}
	for _, b := range blocks {
		name := b.Labels[0]
		r := b.LabelRanges[0]
		if !hclsyntax.ValidIdentifier(name) {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid variable name",
				Detail: fmt.Sprintf("%q is not a valid name: use letters, digits, '_' and '-', starting with a letter.", name), Subject: &r})
			continue
		}
		if prev, ok := vars[name]; ok {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate variable",
				Detail: fmt.Sprintf("Variable %q was already declared at %s.", name, prev.Range), Subject: &r})
			continue
		}
		v := &variable{Name: name, Type: cty.DynamicPseudoType, Range: b.DefRange}
		content, d := b.Body.Content(variableSchema)
		diags = append(diags, d...)
		if a, ok := content.Attributes["type"]; ok {
			ty, d := typeexpr.TypeConstraint(a.Expr)
			diags = append(diags, d...)
			if !d.HasErrors() {
				v.Type, v.Typed = ty, true
			}
		}
		if a, ok := content.Attributes["default"]; ok {
			val, d := a.Expr.Value(nil)
			diags = append(diags, d...)
			if !d.HasErrors() {
				if v.Typed {
					cv, err := convert.Convert(val, v.Type)
					if err != nil {
						diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid default value",
							Detail: fmt.Sprintf("The default of variable %q does not match its type: %s.", name, err), Subject: a.Expr.Range().Ptr()})
					} else {
						val = cv
					}
				}
				v.Default, v.HasDef = val, true
			}
		}
		vars[name] = v
	}
	return vars, diags
}

// resolveVariables applies the outside values to the declarations and returns
// the `var` object for expressions.
func resolveVariables(decl map[string]*variable, in Vars, read func(string) ([]byte, error)) (cty.Value, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	vals := map[string]cty.Value{}
	for name, v := range decl {
		if v.HasDef {
			vals[name] = v.Default
		}
	}
	set := func(name string, raw cty.Value, parseStr bool, src string, rng *hcl.Range) {
		v, ok := decl[name]
		if !ok {
			if src == "environment" {
				return // Terraform ignores undeclared environment values, so do we
			}
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Undeclared variable",
				Detail: fmt.Sprintf("%s sets %q, but the cluster file declares no variable %q. Add a `variable %q {}` block.", src, name, name, name), Subject: rng})
			return
		}
		val := raw
		if parseStr && raw.Type() == cty.String {
			val = parseLoose(raw.AsString(), v)
		}
		if v.Typed {
			cv, err := convert.Convert(val, v.Type)
			if err != nil {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid variable value",
					Detail: fmt.Sprintf("%s gives variable %q a value that does not match its type: %s.", src, name, err), Subject: rng})
				return
			}
			val = cv
		}
		vals[name] = val
	}
	// Environment.
	env := append([]string(nil), in.Env...)
	sort.Strings(env)
	for _, kv := range env {
		k, val, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(k, EnvPrefix) {
			continue
		}
		set(strings.TrimPrefix(k, EnvPrefix), cty.StringVal(val), true, "environment", nil)
	}
	// Var files.
	for _, path := range in.Files {
		src, err := read(path)
		if err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot read variable file", Detail: err.Error()})
			continue
		}
		f, d := hclsyntax.ParseConfig(src, path, hcl.InitialPos)
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		attrs, d := f.Body.JustAttributes()
		diags = append(diags, d...)
		names := make([]string, 0, len(attrs))
		for n := range attrs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			a := attrs[n]
			val, d := a.Expr.Value(nil)
			diags = append(diags, d...)
			if d.HasErrors() {
				continue
			}
			set(n, val, false, "variable file "+path, a.NameRange.Ptr())
		}
	}
	// -var arguments.
	for _, kv := range in.Args {
		k, val, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid -var option",
				Detail: fmt.Sprintf("The value %q is not of the form name=value.", kv)})
			continue
		}
		set(strings.TrimSpace(k), cty.StringVal(val), true, "-var "+k, nil)
	}
	names := make([]string, 0, len(decl))
	for n := range decl {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if _, ok := vals[n]; !ok {
			r := decl[n].Range
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "No value for required variable",
				Detail: fmt.Sprintf("Variable %q has no default. Set it with -var %s=..., a -var-file, or %s%s in the environment.", n, n, EnvPrefix, n), Subject: &r})
			vals[n] = cty.DynamicVal
		}
	}
	if len(vals) == 0 {
		return cty.EmptyObjectVal, diags
	}
	return cty.ObjectVal(vals), diags
}

// parseLoose turns a command-line or environment string into a value: kept as
// a string for string, primitive or untyped variables (converted later), and
// parsed as an HCL expression for collection and object types.
func parseLoose(s string, v *variable) cty.Value {
	if v.Typed && (v.Type.IsPrimitiveType() || v.Type == cty.DynamicPseudoType) {
		return cty.StringVal(s)
	}
	if !v.Typed {
		if v.HasDef && v.Default.Type().IsPrimitiveType() {
			cv, err := convert.Convert(cty.StringVal(s), v.Default.Type())
			if err == nil {
				return cv
			}
		}
		return cty.StringVal(s)
	}
	expr, d := hclsyntax.ParseExpression([]byte(s), "<value>", hcl.InitialPos)
	if d.HasErrors() {
		return cty.StringVal(s)
	}
	val, d := expr.Value(nil)
	if d.HasErrors() {
		return cty.StringVal(s)
	}
	return val
}

// functions is the small standard library available in expressions.
func functions() map[string]function.Function {
	return map[string]function.Function{
		"upper":      stdlib.UpperFunc,
		"lower":      stdlib.LowerFunc,
		"format":     stdlib.FormatFunc,
		"join":       stdlib.JoinFunc,
		"split":      stdlib.SplitFunc,
		"concat":     stdlib.ConcatFunc,
		"merge":      stdlib.MergeFunc,
		"min":        stdlib.MinFunc,
		"max":        stdlib.MaxFunc,
		"length":     stdlib.LengthFunc,
		"range":      stdlib.RangeFunc,
		"tostring":   stdlib.MakeToFunc(cty.String),
		"tonumber":   stdlib.MakeToFunc(cty.Number),
		"trimspace":  stdlib.TrimSpaceFunc,
		"replace":    stdlib.ReplaceFunc,
		"coalesce":   stdlib.CoalesceFunc,
		"formatlist": stdlib.FormatListFunc,
	}
}

func readFile(path string) ([]byte, error) { return os.ReadFile(path) }
