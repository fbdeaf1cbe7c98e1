package spec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
)

// Input bounds. Every input provision evaluates (cluster files, -var-file
// files, -var and PROVISION_VAR_ values) is checked against them before it is
// parsed or evaluated, so a hostile or broken input is refused with the limit
// it hit and where, instead of exhausting the stack or the memory. HCL's
// parser and evaluator recurse once per nesting level, so nesting and
// operator chains are bounded before parsing; for expressions and splats
// multiply work, so their cost is estimated before evaluation; functions are
// the only other way to make large values, so their results are bounded as
// they are made.
const (
	MaxFileBytes      = 1 << 20   // a cluster file or a -var-file file
	MaxValueBytes     = 64 << 10  // one -var or PROVISION_VAR_ value
	MaxNesting        = 32        // brackets, braces, parentheses, quotes, heredocs and interpolations inside one another
	MaxOperators      = 1000      // operators, conditionals, interpolations and index steps in one expression
	MaxEvalSteps      = 1_000_000 // estimated expression evaluations per attribute (for and splat multiply)
	MaxStringBytes    = 1 << 20   // one string a function makes
	MaxElements       = 100_000   // one collection a function makes
	MaxFunctionBytes  = 64 << 20  // all strings functions make while one file set is loaded
	maxFormatWidth    = 1000      // width or precision in format and formatlist verbs
	assumedCollection = 1024      // length assumed for a collection that depends on a for variable (range's own limit)
)

// readFileLimited reads at most MaxFileBytes of a file; a larger file (or an
// endless one such as /dev/zero) is refused after reading one byte more.
func readFileLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxFileBytes {
		return nil, errTooLarge
	}
	return b, nil
}

var errTooLarge = errors.New("too large")

// fileDiag reports a problem with a whole file, pointing at its line 1.
func fileDiag(path, summary, detail string) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail,
		Subject: &hcl.Range{Filename: path, Start: hcl.InitialPos, End: hcl.Pos{Line: 1, Column: 1, Byte: 0}}}
}

// readInput reads a cluster or variable file within MaxFileBytes.
func readInput(path, what string) ([]byte, *hcl.Diagnostic) {
	b, err := readFileLimited(path)
	switch {
	case errors.Is(err, errTooLarge):
		return nil, fileDiag(path, "File too large", fmt.Sprintf("This %s is larger than %s, the limit for %ss. Is it the right file?", what, byteSize(MaxFileBytes), what))
	case err != nil:
		return nil, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot read " + what, Detail: err.Error()}
	}
	return b, nil
}

func byteSize(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// checkTokens bounds nesting and the operators of each expression in an HCL
// source, using the lexer (which does not recurse) before the parser (which
// does). An expression ends at a newline outside parentheses and brackets.
func checkTokens(toks hclsyntax.Tokens) hcl.Diagnostics {
	var stack []hclsyntax.TokenType
	ops := 0
	for _, tok := range toks {
		switch tok.Type {
		case hclsyntax.TokenOBrace, hclsyntax.TokenOBrack, hclsyntax.TokenOParen, hclsyntax.TokenOQuote,
			hclsyntax.TokenOHeredoc, hclsyntax.TokenTemplateInterp, hclsyntax.TokenTemplateControl:
			stack = append(stack, tok.Type)
			if len(stack) > MaxNesting {
				r := tok.Range
				return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Nesting too deep",
					Detail:  fmt.Sprintf("Brackets, braces, parentheses, quotes and interpolations nest more than %d levels deep here (provision's limit).", MaxNesting),
					Subject: &r}}
			}
		case hclsyntax.TokenCBrace, hclsyntax.TokenCBrack, hclsyntax.TokenCParen, hclsyntax.TokenCQuote,
			hclsyntax.TokenCHeredoc, hclsyntax.TokenTemplateSeqEnd:
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
		case hclsyntax.TokenNewline:
			if len(stack) == 0 || stack[len(stack)-1] == hclsyntax.TokenOBrace {
				ops = 0 // a new attribute or object item
			}
		}
		switch tok.Type {
		case hclsyntax.TokenPlus, hclsyntax.TokenMinus, hclsyntax.TokenStar, hclsyntax.TokenSlash, hclsyntax.TokenPercent,
			hclsyntax.TokenEqualOp, hclsyntax.TokenNotEqual, hclsyntax.TokenLessThan, hclsyntax.TokenLessThanEq,
			hclsyntax.TokenGreaterThan, hclsyntax.TokenGreaterThanEq, hclsyntax.TokenAnd, hclsyntax.TokenOr, hclsyntax.TokenBang,
			hclsyntax.TokenQuestion, hclsyntax.TokenTemplateInterp, hclsyntax.TokenTemplateControl, hclsyntax.TokenOBrack, hclsyntax.TokenDot:
			ops++
			if ops > MaxOperators {
				r := tok.Range
				return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Expression too long",
					Detail:  fmt.Sprintf("This expression has more than %d operators, conditionals, interpolations and index steps (provision's limit).", MaxOperators),
					Subject: &r}}
			}
		}
	}
	return nil
}

// checkHCLSource bounds an HCL file or expression source before it is parsed.
func checkHCLSource(src []byte, name string, expr bool) hcl.Diagnostics {
	var toks hclsyntax.Tokens
	if expr {
		toks, _ = hclsyntax.LexExpression(src, name, hcl.InitialPos)
	} else {
		toks, _ = hclsyntax.LexConfig(src, name, hcl.InitialPos)
	}
	return checkTokens(toks) // lexing errors are the parser's to report
}

// checkJSONSource bounds a JSON cluster file: its nesting before HCL's JSON
// parser (which recurses) sees it, and every string that holds a template,
// since those are parsed as HCL templates when evaluated. It returns the
// templates for the cost check.
func checkJSONSource(src []byte, name string) (hcl.Diagnostics, []templateAt) {
	depth, inStr, esc := 0, false, false
	line, col := 1, 1
	for i, c := range src {
		switch {
		case inStr && esc:
			esc = false
		case inStr && c == '\\':
			esc = true
		case c == '"':
			inStr = !inStr
		case !inStr && (c == '[' || c == '{'):
			depth++
			if depth > MaxNesting {
				r := hcl.Range{Filename: name, Start: hcl.Pos{Line: line, Column: col, Byte: i}, End: hcl.Pos{Line: line, Column: col + 1, Byte: i + 1}}
				return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Nesting too deep",
					Detail:  fmt.Sprintf("Arrays and objects nest more than %d levels deep here (provision's limit).", MaxNesting),
					Subject: &r}}, nil
			}
		case !inStr && (c == ']' || c == '}'):
			depth--
		}
		if c == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	// Strings with template sequences, at their positions.
	var out []templateAt
	var diags hcl.Diagnostics
	dec := json.NewDecoder(bytes.NewReader(src))
	for {
		off := dec.InputOffset()
		tok, err := dec.Token()
		if err != nil {
			break // syntax errors are the parser's to report
		}
		s, ok := tok.(string)
		if !ok || (!strings.Contains(s, "${") && !strings.Contains(s, "%{")) {
			continue
		}
		pos := posAt(src, skipToQuote(src, int(off)))
		toks, _ := hclsyntax.LexTemplate([]byte(s), name, pos)
		if d := checkTokens(toks); d.HasErrors() {
			diags = append(diags, d...)
			continue
		}
		out = append(out, templateAt{src: s, pos: pos})
	}
	return diags, out
}

// templateAt is a JSON string holding a template, and where it starts.
type templateAt struct {
	src string
	pos hcl.Pos
}

func skipToQuote(src []byte, off int) int {
	for off < len(src) && src[off] != '"' {
		off++
	}
	return off + 1
}

func posAt(src []byte, off int) hcl.Pos {
	if off > len(src) {
		off = len(src)
	}
	line := 1 + bytes.Count(src[:off], []byte("\n"))
	col := off - bytes.LastIndexByte(src[:off], '\n')
	return hcl.Pos{Line: line, Column: col, Byte: off}
}

// costWalker estimates how many expression evaluations an expression takes:
// one per node, times the length of the collection of every enclosing for
// expression or splat. Collections that do not depend on a for variable are
// evaluated (after their own cost was checked) to get their length; the
// others are assumed to be assumedCollection long.
type costWalker struct {
	ctx  *hcl.EvalContext
	used int64
	diag *hcl.Diagnostic
	// path says which enclosing collections multiply, for the message.
	path []int64
}

// checkCost walks expr and returns a diagnostic when its estimated cost is
// above MaxEvalSteps. Expressions that are not native HCL syntax (JSON) are
// checked through their templates instead.
func checkCost(expr hcl.Expression, ctx *hcl.EvalContext) hcl.Diagnostics {
	e, ok := expr.(hclsyntax.Expression)
	if !ok {
		return nil
	}
	w := &costWalker{ctx: ctx}
	w.expr(e, 1, nil)
	if w.diag != nil {
		return hcl.Diagnostics{w.diag}
	}
	return nil
}

// checkBodyCost checks every attribute of an HCL body and its nested blocks,
// except blocks of the skipped types (checked elsewhere).
func checkBodyCost(body hcl.Body, ctx *hcl.EvalContext, skip ...string) hcl.Diagnostics {
	b, ok := body.(*hclsyntax.Body)
	if !ok {
		return nil
	}
	var diags hcl.Diagnostics
	names := make([]string, 0, len(b.Attributes))
	for n := range b.Attributes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		diags = append(diags, checkCost(b.Attributes[n].Expr, ctx)...)
	}
	for _, blk := range b.Blocks {
		skipped := false
		for _, s := range skip {
			skipped = skipped || blk.Type == s
		}
		if !skipped {
			diags = append(diags, checkBodyCost(blk.Body, ctx)...)
		}
	}
	return diags
}

func (w *costWalker) expr(e hclsyntax.Expression, mult int64, bound map[string]bool) {
	if w.diag != nil || e == nil {
		return
	}
	w.used += mult
	if w.used > MaxEvalSteps || mult > MaxEvalSteps {
		r := e.Range()
		detail := fmt.Sprintf("Evaluating this expression would take more than %d steps (provision's limit).", MaxEvalSteps)
		if len(w.path) > 0 {
			var ls []string
			for _, n := range w.path {
				ls = append(ls, strconv.FormatInt(n, 10))
			}
			detail += fmt.Sprintf(" Enclosing for expressions and splats iterate over collections of %s elements, and every element evaluates the whole body.", strings.Join(ls, " × "))
		}
		w.diag = &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Expression too costly", Detail: detail, Subject: &r}
		return
	}
	switch x := e.(type) {
	case *hclsyntax.LiteralValueExpr, *hclsyntax.ScopeTraversalExpr, *hclsyntax.AnonSymbolExpr, *hclsyntax.ExprSyntaxError:
	case *hclsyntax.ParenthesesExpr:
		w.expr(x.Expression, mult, bound)
	case *hclsyntax.RelativeTraversalExpr:
		w.expr(x.Source, mult, bound)
	case *hclsyntax.FunctionCallExpr:
		for _, a := range x.Args {
			w.expr(a, mult, bound)
		}
	case *hclsyntax.ConditionalExpr:
		w.expr(x.Condition, mult, bound)
		w.expr(x.TrueResult, mult, bound)
		w.expr(x.FalseResult, mult, bound)
	case *hclsyntax.IndexExpr:
		w.expr(x.Collection, mult, bound)
		w.expr(x.Key, mult, bound)
	case *hclsyntax.TupleConsExpr:
		for _, a := range x.Exprs {
			w.expr(a, mult, bound)
		}
	case *hclsyntax.ObjectConsExpr:
		for _, it := range x.Items {
			w.expr(it.KeyExpr, mult, bound)
			w.expr(it.ValueExpr, mult, bound)
		}
	case *hclsyntax.ObjectConsKeyExpr:
		w.expr(x.Wrapped, mult, bound)
	case *hclsyntax.BinaryOpExpr:
		w.expr(x.LHS, mult, bound)
		w.expr(x.RHS, mult, bound)
	case *hclsyntax.UnaryOpExpr:
		w.expr(x.Val, mult, bound)
	case *hclsyntax.TemplateExpr:
		for _, p := range x.Parts {
			w.expr(p, mult, bound)
		}
	case *hclsyntax.TemplateJoinExpr:
		w.expr(x.Tuple, mult, bound)
	case *hclsyntax.TemplateWrapExpr:
		w.expr(x.Wrapped, mult, bound)
	case *hclsyntax.ForExpr:
		w.expr(x.CollExpr, mult, bound)
		n := w.length(x.CollExpr, bound)
		inner := withNames(bound, x.KeyVar, x.ValVar)
		w.path = append(w.path, n)
		w.expr(x.KeyExpr, mult*n, inner)
		w.expr(x.ValExpr, mult*n, inner)
		w.expr(x.CondExpr, mult*n, inner)
		w.path = w.path[:len(w.path)-1]
	case *hclsyntax.SplatExpr:
		w.expr(x.Source, mult, bound)
		n := w.length(x.Source, bound)
		w.path = append(w.path, n)
		w.expr(x.Each, mult*n, bound)
		w.path = w.path[:len(w.path)-1]
	default:
		// A node type this walker does not know: refuse it if it holds
		// anything that iterates, count its nodes otherwise.
		hclsyntax.VisitAll(e, func(n hclsyntax.Node) hcl.Diagnostics {
			switch n.(type) {
			case *hclsyntax.ForExpr, *hclsyntax.SplatExpr:
				if w.diag == nil {
					r := e.Range()
					w.diag = &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Expression too costly", Detail: "provision cannot bound the cost of this expression.", Subject: &r}
				}
			}
			w.used += mult
			return nil
		})
	}
}

func withNames(bound map[string]bool, names ...string) map[string]bool {
	out := make(map[string]bool, len(bound)+len(names))
	for k := range bound {
		out[k] = true
	}
	for _, n := range names {
		if n != "" {
			out[n] = true
		}
	}
	return out
}

// length is the number of elements a for expression or splat iterates over.
func (w *costWalker) length(e hclsyntax.Expression, bound map[string]bool) int64 {
	for _, tr := range e.Variables() {
		if bound[tr.RootName()] {
			return assumedCollection
		}
	}
	v, diags := e.Value(w.ctx)
	if diags.HasErrors() || !v.IsKnown() || v.IsNull() {
		return 1 // the evaluation proper reports it
	}
	v, _ = v.UnmarkDeep()
	if t := v.Type(); t.IsListType() || t.IsSetType() || t.IsMapType() || t.IsTupleType() || t.IsObjectType() {
		return int64(v.LengthInt())
	}
	return 1 // a splat of a single value
}

// evalBudget counts what functions make while one set of files is loaded.
type evalBudget struct{ bytes atomic.Int64 }

var formatVerbRe = regexp.MustCompile(`%[-+# 0]*([0-9]*)(?:\.([0-9]*))?`)

// guard wraps a function so that its inputs are checked before the call
// where the result could explode (format widths, replace, join, split,
// concat) and its result is bounded after it.
func guard(name string, f function.Function, b *evalBudget) function.Function {
	spec := &function.Spec{
		Description: f.Description(),
		Params:      f.Params(),
		VarParam:    f.VarParam(),
		Type: func(args []cty.Value) (cty.Type, error) {
			return f.ReturnTypeForValues(args)
		},
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			if err := precheck(name, args); err != nil {
				return cty.NilVal, err
			}
			v, err := f.Call(args)
			if err != nil {
				return v, err
			}
			if err := b.account(v); err != nil {
				return cty.NilVal, err
			}
			return v, nil
		},
	}
	return function.New(spec)
}

// account bounds one result and the running total.
func (b *evalBudget) account(v cty.Value) error {
	v, _ = v.UnmarkDeep()
	if !v.IsWhollyKnown() || v.IsNull() {
		return nil
	}
	var size int64
	var walkErr error
	_ = cty.Walk(v, func(_ cty.Path, e cty.Value) (bool, error) {
		if e.IsNull() || !e.IsKnown() {
			return false, nil
		}
		t := e.Type()
		switch {
		case t == cty.String:
			n := int64(len(e.AsString()))
			if n > MaxStringBytes {
				walkErr = fmt.Errorf("the result is a string of %d bytes, more than provision's limit of %s", n, byteSize(MaxStringBytes))
				return false, walkErr
			}
			size += n
		case t.IsListType() || t.IsSetType() || t.IsMapType() || t.IsTupleType():
			if n := e.LengthInt(); n > MaxElements {
				walkErr = fmt.Errorf("the result has %d elements, more than provision's limit of %d", n, MaxElements)
				return false, walkErr
			}
		}
		return true, nil
	})
	if walkErr != nil {
		return walkErr
	}
	if total := b.bytes.Add(size); total > MaxFunctionBytes {
		return fmt.Errorf("functions have made more than %s of strings while loading the spec (provision's limit)", byteSize(MaxFunctionBytes))
	}
	return nil
}

// precheck refuses calls whose result would be too large before they run.
func precheck(name string, args []cty.Value) error {
	str := func(i int) (string, bool) {
		if i >= len(args) {
			return "", false
		}
		v, _ := args[i].Unmark()
		if !v.IsKnown() || v.IsNull() || v.Type() != cty.String {
			return "", false
		}
		return v.AsString(), true
	}
	elems := func(v cty.Value) (int, []cty.Value) {
		v, _ = v.UnmarkDeep()
		if !v.IsWhollyKnown() || v.IsNull() || !v.CanIterateElements() {
			return 0, nil
		}
		return v.LengthInt(), v.AsValueSlice()
	}
	switch name {
	case "format", "formatlist":
		f, ok := str(0)
		if !ok {
			return nil
		}
		for _, m := range formatVerbRe.FindAllStringSubmatch(f, -1) {
			for _, num := range m[1:] {
				if n, err := strconv.Atoi(num); err == nil && n > maxFormatWidth {
					return fmt.Errorf("a width or precision of %d is more than provision's limit of %d", n, maxFormatWidth)
				}
			}
		}
	case "replace":
		s, ok1 := str(0)
		sub, ok2 := str(1)
		repl, ok3 := str(2)
		if ok1 && ok2 && ok3 {
			n := strings.Count(s, sub)
			if est := int64(len(s)) + int64(n)*int64(len(repl)); est > MaxStringBytes {
				return fmt.Errorf("the result would be %d bytes, more than provision's limit of %s", est, byteSize(MaxStringBytes))
			}
		}
	case "split":
		sep, ok1 := str(0)
		s, ok2 := str(1)
		if ok1 && ok2 {
			n := len(s)
			if sep != "" {
				n = strings.Count(s, sep) + 1
			}
			if n > MaxElements {
				return fmt.Errorf("the result would have %d elements, more than provision's limit of %d", n, MaxElements)
			}
		}
	case "join":
		sep, _ := str(0)
		var total, count int64
		for _, a := range args[1:] {
			_, vs := elems(a)
			for _, v := range vs {
				if v.Type() == cty.String && !v.IsNull() {
					total += int64(len(v.AsString()))
				}
				count++
			}
		}
		if est := total + count*int64(len(sep)); est > MaxStringBytes {
			return fmt.Errorf("the result would be %d bytes, more than provision's limit of %s", est, byteSize(MaxStringBytes))
		}
	case "concat":
		total := 0
		for _, a := range args {
			n, _ := elems(a)
			total += n
		}
		if total > MaxElements {
			return fmt.Errorf("the result would have %d elements, more than provision's limit of %d", total, MaxElements)
		}
	}
	return nil
}
