package spec

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/typeexpr"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	hcljson "github.com/hashicorp/hcl/v2/json"
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
	// Sensitive values are replaced by "(sensitive)" in everything provision
	// prints: diagnostics, plans, logs and errors.
	Sensitive bool
	Range     hcl.Range
	// raw holds the text of every value given to a sensitive variable,
	// also those refused (a diagnostic may show their source line).
	raw []string
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
func decodeVariables(blocks hcl.Blocks, budget *evalBudget) (map[string]*variable, hcl.Diagnostics) {
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
		if a, ok := content.Attributes["sensitive"]; ok {
			val, d := a.Expr.Value(nil)
			diags = append(diags, d...)
			if !d.HasErrors() {
				if bv, err := convert.Convert(val, cty.Bool); err != nil || bv.IsNull() || !bv.IsKnown() {
					diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid sensitive flag",
						Detail: "sensitive must be true or false.", Subject: a.Expr.Range().Ptr()})
				} else {
					v.Sensitive = bv.True()
				}
			}
		}
		if a, ok := content.Attributes["default"]; ok {
			if d := checkCost(a.Expr, nil); d.HasErrors() {
				diags = append(diags, d...)
				vars[name] = v
				continue
			}
			val, d := a.Expr.Value(nil)
			diags = append(diags, d...)
			if !d.HasErrors() {
				if v.Sensitive {
					v.raw = append(v.raw, leaves(val)...)
				}
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
// the `var` object for expressions, and the values of sensitive variables as
// text (every string, number and bool in them) for redaction.
func resolveVariables(decl map[string]*variable, in Vars, read func(string) ([]byte, error), budget *evalBudget) (cty.Value, []string, hcl.Diagnostics) {
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
			if strings.HasPrefix(src, "environment") {
				return // Terraform ignores undeclared environment values, so do we
			}
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Undeclared variable",
				Detail: fmt.Sprintf("%s sets %q, but the cluster file declares no variable %q. Add a `variable %q {}` block.", src, name, name, name), Subject: rng})
			return
		}
		if v.Sensitive {
			v.raw = append(v.raw, leaves(raw)...)
		}
		val := raw
		if parseStr && raw.Type() == cty.String {
			if len(raw.AsString()) > MaxValueBytes {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Variable value too large",
					Detail: fmt.Sprintf("%s gives variable %q a value of %d bytes; values from the command line and the environment are limited to %s.", src, name, len(raw.AsString()), byteSize(MaxValueBytes)), Subject: rng})
				return
			}
			var d hcl.Diagnostics
			val, d = parseLoose(raw.AsString(), v, src)
			if d.HasErrors() {
				diags = append(diags, d...)
				return
			}
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
		set(strings.TrimPrefix(k, EnvPrefix), cty.StringVal(val), true, "environment variable "+k, nil)
	}
	// Var files. Until a file parses, nothing knows which of its lines hold
	// a sensitive value: with any sensitive variable declared, its syntax
	// errors give the position but not the source line.
	anySensitive := false
	for _, v := range decl {
		anySensitive = anySensitive || v.Sensitive
	}
	for _, path := range in.Files {
		src, err := read(path)
		if errors.Is(err, errTooLarge) {
			diags = append(diags, fileDiag(path, "File too large", fmt.Sprintf("This variable file is larger than %s, the limit for variable files. Is it the right file?", byteSize(MaxFileBytes))))
			continue
		}
		if err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot read variable file", Detail: err.Error()})
			continue
		}
		var f *hcl.File
		var d hcl.Diagnostics
		if strings.HasSuffix(path, ".json") {
			// As cluster files: .json is JSON (its strings taken literally here,
			// there is no context to evaluate templates in).
			if d, _ = checkJSONSource(src, path); !d.HasErrors() {
				f, d = hcljson.Parse(src, path)
			}
		} else if d = checkHCLSource(src, path, false); !d.HasErrors() {
			f, d = hclsyntax.ParseConfig(src, path, hcl.InitialPos)
		}
		diags = append(diags, hideSource(d, anySensitive)...)
		if d.HasErrors() {
			continue
		}
		attrs, d := f.Body.JustAttributes()
		diags = append(diags, hideSource(d, anySensitive)...)
		names := make([]string, 0, len(attrs))
		for n := range attrs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			a := attrs[n]
			if d := checkCost(a.Expr, nil); d.HasErrors() {
				diags = append(diags, hideSource(d, anySensitive)...)
				continue
			}
			val, d := a.Expr.Value(nil)
			diags = append(diags, hideSource(d, anySensitive)...)
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
	var secrets []string
	for _, n := range names {
		if decl[n].Sensitive {
			secrets = append(secrets, decl[n].raw...)
			secrets = append(secrets, leaves(vals[n])...)
		}
	}
	sort.Strings(secrets)
	secrets = slices.Compact(secrets)
	if len(vals) == 0 {
		return cty.EmptyObjectVal, secrets, diags
	}
	return cty.ObjectVal(vals), secrets, diags
}

// leaves returns the text of every primitive value inside v.
func leaves(v cty.Value) []string {
	var out []string
	_ = cty.Walk(v, func(_ cty.Path, e cty.Value) (bool, error) {
		if e.IsNull() || !e.IsKnown() {
			return false, nil
		}
		if e.Type().IsPrimitiveType() {
			if s, err := convert.Convert(e, cty.String); err == nil && !s.IsNull() && s.AsString() != "" {
				out = append(out, s.AsString())
			}
		}
		return true, nil
	})
	return out
}

// parseLoose turns a command-line or environment string into a value: kept as
// a string for string, primitive or untyped variables (converted later), and
// parsed as an HCL expression for collection and object types. An expression
// beyond the input bounds is refused; one that does not parse stays a string
// (the type conversion then says what is wrong).
func parseLoose(s string, v *variable, src string) (cty.Value, hcl.Diagnostics) {
	if v.Typed && (v.Type.IsPrimitiveType() || v.Type == cty.DynamicPseudoType) {
		return cty.StringVal(s), nil
	}
	if !v.Typed {
		if v.HasDef && v.Default.Type().IsPrimitiveType() {
			cv, err := convert.Convert(cty.StringVal(s), v.Default.Type())
			if err == nil {
				return cv, nil
			}
		}
		return cty.StringVal(s), nil
	}
	name := "<" + src + ">"
	if d := checkHCLSource([]byte(s), name, true); d.HasErrors() {
		return cty.NilVal, d
	}
	expr, d := hclsyntax.ParseExpression([]byte(s), name, hcl.InitialPos)
	if d.HasErrors() {
		return cty.StringVal(s), nil
	}
	if d := checkCost(expr, nil); d.HasErrors() {
		return cty.NilVal, d
	}
	val, d := expr.Value(nil)
	if d.HasErrors() {
		return cty.StringVal(s), nil
	}
	return val, nil
}

// functions is the small standard library available in expressions, each
// bounded by budget (see guard).
func functions(budget *evalBudget) map[string]function.Function {
	fs := map[string]function.Function{
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
	for name, f := range fs {
		fs[name] = guard(name, f, budget)
	}
	return fs
}

func readFile(path string) ([]byte, error) { return readFileLimited(path) }
