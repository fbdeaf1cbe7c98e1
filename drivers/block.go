package drivers

import (
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
)

// Block is a driver block being decoded: its attributes decoded into the
// driver's raw struct (gohcl tags), kept for their source ranges, and the
// diagnostics of the checks that follow, each at the attribute at fault.
type Block struct {
	body    hcl.Body
	content *hcl.BodyContent
	Diags   hcl.Diagnostics
}

// DecodeBlock decodes body into raw, a pointer to a struct with hcl tags.
// When ok is false, Diags says why and the checks should not run.
func DecodeBlock(body hcl.Body, ctx *hcl.EvalContext, raw any) (b *Block, ok bool) {
	b = &Block{body: body, Diags: gohcl.DecodeBody(body, ctx, raw)}
	if b.Diags.HasErrors() {
		return b, false
	}
	schema, _ := gohcl.ImpliedBodySchema(raw)
	b.content, _, _ = body.PartialContent(schema)
	return b, true
}

// Range is the range of attribute name's value, or where it is missing.
func (b *Block) Range(name string) *hcl.Range {
	if b.content != nil {
		if a, ok := b.content.Attributes[name]; ok {
			r := a.Expr.Range()
			return &r
		}
	}
	r := b.body.MissingItemRange()
	return &r
}

// Bad records an error at attribute attr.
func (b *Block) Bad(attr, summary, detail string) {
	b.Diags = append(b.Diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: b.Range(attr)})
}

// Str is *p, or def when the attribute is not set.
func Str(p *string, def string) string {
	if p == nil {
		return def
	}
	return *p
}

// Content is the block's attributes and nested blocks as decoded.
func (b *Block) Content() *hcl.BodyContent {
	if b.content == nil {
		return &hcl.BodyContent{}
	}
	return b.content
}
