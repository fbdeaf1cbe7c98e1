package spec

import (
	"fmt"
	"math"
	"math/big"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	"github.com/zclconf/go-cty/cty/gocty"

	"github.com/provision/provision/drivers"
)

// dec evaluates attributes one by one so every value keeps its source range
// for diagnostics, here and later (Cluster.Ranges).
type dec struct {
	diags  hcl.Diagnostics
	ctx    *hcl.EvalContext
	ranges map[string]hcl.Range
	// sensitive says which attributes use a sensitive variable;
	// sensitivePaths collects the dotted paths of those decoded.
	sensitive      sensitiveUse
	sensitivePaths map[string]bool
	// hostsCheckers are the drivers that check the pools' hosts.
	hostsCheckers []namedHostsChecker
}

type namedHostsChecker struct {
	name string
	drivers.HostsChecker
}

func (d *dec) errf(rng hcl.Range, summary, format string, args ...any) {
	r := rng
	d.diags = append(d.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: fmt.Sprintf(format, args...), Subject: &r})
}

func (d *dec) warnf(rng hcl.Range, summary, format string, args ...any) {
	r := rng
	d.diags = append(d.diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: summary, Detail: fmt.Sprintf(format, args...), Subject: &r})
}

// value evaluates one attribute and converts it to ty. ok is false when the
// attribute is absent, null or broken (broken ones add diagnostics).
func (d *dec) value(attrs hcl.Attributes, name, path string, ty cty.Type) (cty.Value, hcl.Range, bool) {
	a, ok := attrs[name]
	if !ok {
		return cty.NilVal, hcl.Range{}, false
	}
	rng := a.Expr.Range()
	if d.ranges != nil {
		d.ranges[path] = rng
	}
	if d.sensitivePaths != nil && d.sensitive.covers(rng) {
		d.sensitivePaths[path] = true
	}
	v, diags := a.Expr.Value(d.ctx)
	d.diags = append(d.diags, diags...)
	if diags.HasErrors() {
		return cty.NilVal, rng, false
	}
	if v.IsNull() {
		return cty.NilVal, rng, false
	}
	if !v.IsWhollyKnown() {
		d.errf(rng, "Unknown value", "The value of %s is not known when the file is loaded.", path)
		return cty.NilVal, rng, false
	}
	cv, err := convert.Convert(v, ty)
	if err != nil {
		d.errf(rng, "Incorrect attribute value type", "Inappropriate value for %s: %s.", path, err)
		return cty.NilVal, rng, false
	}
	if cv.IsNull() {
		return cty.NilVal, rng, false
	}
	if !cv.IsWhollyKnown() {
		d.errf(rng, "Unknown value", "The value of %s is not known when the file is loaded.", path)
		return cty.NilVal, rng, false
	}
	return cv, rng, true
}

func (d *dec) str(attrs hcl.Attributes, name, path string, dst *string) (hcl.Range, bool) {
	v, rng, ok := d.value(attrs, name, path, cty.String)
	if ok {
		*dst = v.AsString()
	}
	return rng, ok
}

// requiredStr decodes a string the schema requires. hcl only checks that
// the attribute is written; null (directly, or from a variable) is refused
// here too rather than read as unset.
func (d *dec) requiredStr(attrs hcl.Attributes, name, path string, dst *string) (hcl.Range, bool) {
	n := len(d.diags)
	rng, ok := d.str(attrs, name, path, dst)
	if _, present := attrs[name]; present && !ok && !d.diags[n:].HasErrors() {
		d.errf(rng, "Missing value", "%s is required and cannot be null.", path)
	}
	return rng, ok
}

func (d *dec) boolean(attrs hcl.Attributes, name, path string, dst *bool) (hcl.Range, bool) {
	v, rng, ok := d.value(attrs, name, path, cty.Bool)
	if ok {
		*dst = v.True()
	}
	return rng, ok
}

func (d *dec) integer(attrs hcl.Attributes, name, path string, dst *int) (hcl.Range, bool) {
	v, rng, ok := d.value(attrs, name, path, cty.Number)
	if !ok {
		return rng, false
	}
	bf := v.AsBigFloat()
	if !bf.IsInt() {
		d.errf(rng, "Invalid number", "%s must be a whole number, not %s.", path, bf.Text('g', 10))
		return rng, false
	}
	i, acc := bf.Int64()
	if acc != big.Exact || i > math.MaxInt32 || i < math.MinInt32 {
		d.errf(rng, "Number out of range", "%s is too large.", path)
		return rng, false
	}
	*dst = int(i)
	return rng, true
}

func (d *dec) strList(attrs hcl.Attributes, name, path string, dst *[]string) (hcl.Range, bool) {
	v, rng, ok := d.value(attrs, name, path, cty.List(cty.String))
	if !ok {
		return rng, false
	}
	var out []string
	for it := v.ElementIterator(); it.Next(); {
		_, e := it.Element()
		if e.IsNull() {
			d.errf(rng, "Invalid list element", "%s must not contain null.", path)
			return rng, false
		}
		out = append(out, e.AsString())
	}
	*dst = out
	return rng, true
}

func (d *dec) strMap(attrs hcl.Attributes, name, path string, dst *map[string]string) (hcl.Range, bool) {
	v, rng, ok := d.value(attrs, name, path, cty.Map(cty.String))
	if !ok {
		return rng, false
	}
	out := map[string]string{}
	for it := v.ElementIterator(); it.Next(); {
		k, e := it.Element()
		if e.IsNull() {
			d.errf(rng, "Invalid map value", "%s[%q] must not be null.", path, k.AsString())
			return rng, false
		}
		out[k.AsString()] = e.AsString()
	}
	*dst = out
	return rng, true
}

// size reads a disk size: a number of GiB or a string with a unit.
func (d *dec) size(attrs hcl.Attributes, name, path string, dst *int) (hcl.Range, bool) {
	a, ok := attrs[name]
	if !ok {
		return hcl.Range{}, false
	}
	v, rng, ok := d.value(attrs, name, path, cty.DynamicPseudoType)
	if !ok {
		return rng, false
	}
	_ = a
	switch v.Type() {
	case cty.Number:
		var f float64
		if err := gocty.FromCtyValue(v, &f); err != nil || f != math.Trunc(f) {
			d.errf(rng, "Invalid size", "%s must be a whole number of GiB or a string like \"20GiB\".", path)
			return rng, false
		}
		if f > 1<<20 || f < -(1<<20) {
			d.errf(rng, "Invalid size", "%s is out of range.", path)
			return rng, false
		}
		*dst = int(f)
		return rng, true
	case cty.String:
		g, err := ParseSize(v.AsString())
		if err != nil {
			d.errf(rng, "Invalid size", "%s: %s.", path, err)
			return rng, false
		}
		*dst = g
		return rng, true
	default:
		d.errf(rng, "Incorrect attribute value type", "%s must be a number of GiB or a string like \"20GiB\", not %s.", path, v.Type().FriendlyName())
		return rng, false
	}
}

var sizeRe = regexp.MustCompile(`^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$`)

// ParseSize turns "20", "20G", "20GiB", "20GB", "512MiB", "1TiB" into whole
// GiB, rounding up. Decimal units (GB, MB, TB) are converted exactly.
func ParseSize(s string) (int, error) {
	m := sizeRe.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q is not a size: write a number of GiB or e.g. \"20GiB\", \"512MiB\", \"1TiB\"", s)
	}
	n, err := strconv.ParseFloat(m[1], 64)
	if err != nil || n > 1<<30 {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	const gib = float64(1 << 30)
	var bytes float64
	switch strings.ToLower(m[2]) {
	case "", "g", "gi", "gib":
		bytes = n * gib
	case "gb":
		bytes = n * 1e9
	case "m", "mi", "mib":
		bytes = n * (1 << 20)
	case "mb":
		bytes = n * 1e6
	case "t", "ti", "tib":
		bytes = n * (1 << 40)
	case "tb":
		bytes = n * 1e12
	default:
		return 0, fmt.Errorf("%q has an unknown unit %q: use MiB, GiB or TiB", s, m[2])
	}
	g := math.Ceil(bytes / gib)
	if g > 1<<20 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return int(g), nil
}

// sortedKeys returns a map's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
