package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/bargauge"
	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// Register the plugin models of the panel types and the datasource we use.
// Without this the SDK decodes panel options, fieldConfig.defaults.custom and
// targets as untyped maps and checks none of them.
func init() {
	rt := cog.NewRuntime() // a process-wide singleton
	rt.RegisterPanelcfgVariant(timeseries.VariantConfig())
	rt.RegisterPanelcfgVariant(stat.VariantConfig())
	rt.RegisterPanelcfgVariant(table.VariantConfig())
	rt.RegisterPanelcfgVariant(bargauge.VariantConfig())
	rt.RegisterDataqueryVariant(prometheus.VariantConfig())
}

// validateJSON returns every problem found in one dashboard JSON document:
// first against the SDK's dashboard model, then the project's own rules.
func validateJSON(raw []byte) []string {
	// Strict load: unknown fields, missing required fields, wrong types, also
	// inside panel options, fieldConfig.defaults.custom and targets.
	var strict dashboard.Dashboard
	problems := errorList(strict.UnmarshalJSONStrict(raw))

	// The strict load leaves every panel empty (see errorList), so the schema
	// constraints (Validate) and our own checks run on a plain decode.
	var d dashboard.Dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		return append(problems, err.Error())
	}
	problems = append(problems, errorList(d.Validate())...)
	problems = append(problems, fieldConfigStrict(raw)...)
	return append(problems, projectChecks(&d)...)
}

// errorList flattens an SDK error into one line per problem.
//
// SDK v0.0.22 trap: the strict unmarshalers end with `return errs`, a nil
// cog.BuildErrors slice in a non-nil error interface, so success looks like a
// failure with an empty message. An empty BuildErrors is success. (Because of
// the same bug, PanelOrRowPanel.UnmarshalJSONStrict returns before it stores
// the panel, which is why validateJSON decodes twice.)
func errorList(err error) []string {
	if err == nil {
		return nil
	}
	var be cog.BuildErrors
	if errors.As(err, &be) {
		var out []string
		for _, e := range be {
			out = append(out, e.Error())
		}
		return out
	}
	return []string{err.Error()}
}

// fieldConfigStrict closes a gap in the SDK's strict load: it decodes a
// panel's fieldConfig loosely and checks only defaults.custom, so a typo such
// as defaults.unitt would pass. Here the whole fieldConfig is loaded strictly.
func fieldConfigStrict(raw []byte) []string {
	type rawPanel struct {
		FieldConfig json.RawMessage   `json:"fieldConfig"`
		Panels      []json.RawMessage `json:"panels"`
	}
	var doc struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if json.Unmarshal(raw, &doc) != nil {
		return nil // reported by the model checks
	}
	var out []string
	var walk func(path string, panels []json.RawMessage)
	walk = func(path string, panels []json.RawMessage) {
		for i, pr := range panels {
			var p rawPanel
			if json.Unmarshal(pr, &p) != nil {
				continue
			}
			where := fmt.Sprintf("%s[%d]", path, i)
			if p.FieldConfig != nil {
				var fc dashboard.FieldConfigSource
				for _, e := range errorList(fc.UnmarshalJSONStrict(p.FieldConfig)) {
					out = append(out, where+".fieldConfig."+e)
				}
			}
			walk(where+".panels", p.Panels)
		}
	}
	walk("panels", doc.Panels)
	return out
}

// Reducer ids Grafana knows (its fieldReducers registry, percentiles left
// out), for legend calcs and reduceOptions.calcs. The SDK types them as plain
// strings.
var reducers = []string{
	"lastNotNull", "last", "firstNotNull", "first", "min", "max", "mean", "median",
	"variance", "stdDev", "sum", "count", "range", "delta", "step", "diff", "logmin",
	"allIsZero", "allIsNull", "changeCount", "distinctCount", "diffperc", "allValues", "uniqueValues",
}

// $name or ${name} or ${name:format}; $1 (label_replace) does not match.
var varRef = regexp.MustCompile(`\$(?:\{([A-Za-z_]\w*)(?::[^}]*)?\}|([A-Za-z_]\w*))`)

type checker struct{ problems []string }

func (c *checker) add(where, format string, args ...any) {
	c.problems = append(c.problems, where+": "+fmt.Sprintf(format, args...))
}

// oneOf checks an enum-valued option. The SDK types these as string types
// with constants but never checks the value.
func oneOf[T ~string](c *checker, where, field string, v T, allowed ...T) {
	if !slices.Contains(allowed, v) {
		c.add(where, "%s %q is not one of %q", field, v, allowed)
	}
}

func (c *checker) calcs(where, field string, calcs []string, required bool) {
	if required && len(calcs) == 0 {
		c.add(where, "%s is empty", field)
	}
	for _, calc := range calcs {
		if !slices.Contains(reducers, calc) {
			c.add(where, "%s has unknown reducer %q", field, calc)
		}
	}
}

func isPromDatasource(ds *common.DataSourceRef) bool {
	return ds != nil && ds.Type != nil && *ds.Type == "prometheus" && ds.Uid != nil && *ds.Uid == "${datasource}"
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// projectChecks are the rules the SDK model does not express.
func projectChecks(d *dashboard.Dashboard) []string {
	c := &checker{}
	if uid := str(d.Uid); uid == "" || len(uid) > 40 {
		c.add("uid", "must be set and at most 40 characters, got %q", uid)
	}
	if str(d.Title) == "" {
		c.add("title", "is empty")
	}
	if !slices.Contains(d.Tags, "benchkite") {
		c.add("tags", "must include \"benchkite\"")
	}

	vars := map[string]bool{}
	dsVar := false
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		if v.Name == "datasource" && v.Type == dashboard.VariableTypeDatasource &&
			v.Query != nil && str(v.Query.String) == "prometheus" {
			dsVar = true
		}
	}
	if !dsVar {
		c.add("templating", "needs a variable \"datasource\" of type datasource with query \"prometheus\"")
	}
	// Every $variable a query uses must exist, or Grafana sends it verbatim.
	checkRefs := func(where, text string) {
		for _, m := range varRef.FindAllStringSubmatch(text, -1) {
			name := m[1] + m[2]
			if !strings.HasPrefix(name, "__") && !vars[name] { // $__rate_interval etc. are built in
				c.add(where, "uses $%s but the dashboard has no such variable", name)
			}
		}
	}
	for i, v := range d.Templating.List {
		if v.Query != nil {
			checkRefs(fmt.Sprintf("templating.list[%d] %q", i, v.Name), str(v.Query.String))
		}
	}

	ids := map[uint32]string{}
	checkID := func(where string, id *uint32) {
		if id == nil || *id == 0 {
			c.add(where, "has no id")
			return
		}
		if first, dup := ids[*id]; dup {
			c.add(where, "id %d is also used by %s", *id, first)
			return
		}
		ids[*id] = where
	}
	var top []placed
	for i, pr := range d.Panels {
		where := fmt.Sprintf("panels[%d]", i)
		switch {
		case pr.RowPanel != nil:
			r := pr.RowPanel
			where += fmt.Sprintf(" (row %q)", str(r.Title))
			checkID(where, &r.Id)
			if str(r.Title) == "" {
				c.add(where, "title is empty")
			}
			top = c.gridPos(where, r.GridPos, top)
			if !r.Collapsed && len(r.Panels) > 0 {
				// Grafana drops the nested panels of an expanded row.
				c.add(where, "is expanded but has nested panels; they belong after the row")
			}
			var nested []placed
			for j := range r.Panels {
				w := fmt.Sprintf("panels[%d].panels[%d]", i, j)
				nested = c.panel(w, &r.Panels[j], checkID, checkRefs, nested)
			}
		case pr.Panel != nil:
			top = c.panel(where, pr.Panel, checkID, checkRefs, top)
		default:
			c.add(where, "is neither a panel nor a row")
		}
	}
	return c.problems
}

type placed struct {
	where string
	pos   dashboard.GridPos
}

// gridPos checks one position and that it overlaps none placed before it in
// the same layout (the dashboard, or one collapsed row's nested panels).
func (c *checker) gridPos(where string, g *dashboard.GridPos, others []placed) []placed {
	if g == nil {
		c.add(where, "has no gridPos")
		return others
	}
	// The SDK checks w in 1..24, h > 0 and x < 24, but not x+w.
	if g.X+g.W > 24 {
		c.add(where, "gridPos x %d + w %d is past column 24", g.X, g.W)
	}
	for _, o := range others {
		p := o.pos
		if g.X < p.X+p.W && p.X < g.X+g.W && g.Y < p.Y+p.H && p.Y < g.Y+g.H {
			c.add(where, "gridPos overlaps %s", o.where)
		}
	}
	return append(others, placed{where, *g})
}

func (c *checker) panel(where string, p *dashboard.Panel, checkID func(string, *uint32), checkRefs func(string, string), others []placed) []placed {
	where += fmt.Sprintf(" (%s %q)", p.Type, str(p.Title))
	checkID(where, p.Id)
	if str(p.Title) == "" {
		c.add(where, "title is empty")
	}
	if str(p.Description) == "" {
		c.add(where, "description is empty")
	}
	others = c.gridPos(where, p.GridPos, others)
	if !slices.Contains(panelTypes, p.Type) {
		c.add(where, "panel type %q is not one of %v", p.Type, panelTypes)
	}
	if !isPromDatasource(p.Datasource) {
		c.add(where, "datasource must be {type: prometheus, uid: ${datasource}}")
	}

	if len(p.Targets) == 0 {
		c.add(where, "has no targets")
	}
	refIDs := map[string]bool{}
	for i, t := range p.Targets {
		tw := fmt.Sprintf("%s.targets[%d]", where, i)
		q, ok := t.(*prometheus.Dataquery)
		if !ok {
			c.add(tw, "is not a Prometheus query (datasource must be {type: prometheus, uid: ${datasource}})")
			continue
		}
		if !isPromDatasource(q.Datasource) {
			c.add(tw, "datasource must be {type: prometheus, uid: ${datasource}}")
		}
		if strings.TrimSpace(q.Expr) == "" {
			c.add(tw, "expr is empty")
		}
		checkRefs(tw, q.Expr)
		switch ref := str(q.RefId); {
		case ref == "":
			c.add(tw, "refId is empty")
		case refIDs[ref]:
			c.add(tw, "refId %q is used twice", ref)
		default:
			refIDs[ref] = true
		}
		if q.Format != nil {
			oneOf(c, tw, "format", *q.Format, prometheus.PromQueryFormatTimeSeries, prometheus.PromQueryFormatTable, prometheus.PromQueryFormatHeatmap)
		}
		if q.EditorMode != nil {
			oneOf(c, tw, "editorMode", *q.EditorMode, prometheus.QueryEditorModeCode, prometheus.QueryEditorModeBuilder)
		}
	}

	if fc := p.FieldConfig; fc == nil {
		c.add(where, "has no fieldConfig")
	} else {
		if u := str(fc.Defaults.Unit); !slices.Contains(allowedUnits, u) {
			c.add(where, "fieldConfig.defaults.unit %q is not one of %q", u, allowedUnits)
		}
		if th := fc.Defaults.Thresholds; th != nil {
			oneOf(c, where, "fieldConfig.defaults.thresholds.mode", th.Mode, dashboard.ThresholdsModeAbsolute, dashboard.ThresholdsModePercentage)
		}
		if custom, ok := fc.Defaults.Custom.(*timeseries.FieldConfig); ok && custom.Stacking != nil && custom.Stacking.Mode != nil {
			oneOf(c, where, "fieldConfig.defaults.custom.stacking.mode", *custom.Stacking.Mode, common.StackingModeNone, common.StackingModeNormal, common.StackingModePercent)
		}
	}

	legend := func(l common.VizLegendOptions) {
		oneOf(c, where, "options.legend.displayMode", l.DisplayMode, common.LegendDisplayModeList, common.LegendDisplayModeTable, common.LegendDisplayModeHidden)
		oneOf(c, where, "options.legend.placement", l.Placement, common.LegendPlacementBottom, common.LegendPlacementRight)
		c.calcs(where, "options.legend.calcs", l.Calcs, false)
	}
	orientation := func(o common.VizOrientation) {
		oneOf(c, where, "options.orientation", o, common.VizOrientationAuto, common.VizOrientationVertical, common.VizOrientationHorizontal)
	}
	switch o := p.Options.(type) {
	case *timeseries.Options:
		legend(o.Legend)
		oneOf(c, where, "options.tooltip.mode", o.Tooltip.Mode, common.TooltipDisplayModeSingle, common.TooltipDisplayModeMulti, common.TooltipDisplayModeNone)
		oneOf(c, where, "options.tooltip.sort", o.Tooltip.Sort, common.SortOrderAscending, common.SortOrderDescending, common.SortOrderNone)
	case *stat.Options:
		oneOf(c, where, "options.colorMode", o.ColorMode, common.BigValueColorModeValue, common.BigValueColorModeBackground, common.BigValueColorModeBackgroundSolid, common.BigValueColorModeNone)
		oneOf(c, where, "options.graphMode", o.GraphMode, common.BigValueGraphModeNone, common.BigValueGraphModeLine, common.BigValueGraphModeArea)
		oneOf(c, where, "options.justifyMode", o.JustifyMode, common.BigValueJustifyModeAuto, common.BigValueJustifyModeCenter)
		oneOf(c, where, "options.textMode", o.TextMode, common.BigValueTextModeAuto, common.BigValueTextModeValue, common.BigValueTextModeValueAndName, common.BigValueTextModeName, common.BigValueTextModeNone)
		oneOf(c, where, "options.percentChangeColorMode", o.PercentChangeColorMode, common.PercentChangeColorModeStandard, common.PercentChangeColorModeInverted, common.PercentChangeColorModeSameAsValue)
		orientation(o.Orientation)
		c.calcs(where, "options.reduceOptions.calcs", o.ReduceOptions.Calcs, true)
	case *table.Options:
		if o.CellHeight != nil {
			oneOf(c, where, "options.cellHeight", *o.CellHeight, common.TableCellHeightSm, common.TableCellHeightMd, common.TableCellHeightLg, common.TableCellHeightAuto)
		}
		if o.Footer != nil {
			c.calcs(where, "options.footer.reducer", o.Footer.Reducer, false)
		}
	case *bargauge.Options:
		legend(o.Legend)
		orientation(o.Orientation)
		oneOf(c, where, "options.displayMode", o.DisplayMode, common.BarGaugeDisplayModeBasic, common.BarGaugeDisplayModeLcd, common.BarGaugeDisplayModeGradient)
		oneOf(c, where, "options.valueMode", o.ValueMode, common.BarGaugeValueModeColor, common.BarGaugeValueModeText, common.BarGaugeValueModeHidden)
		oneOf(c, where, "options.namePlacement", o.NamePlacement, common.BarGaugeNamePlacementAuto, common.BarGaugeNamePlacementTop, common.BarGaugeNamePlacementLeft, common.BarGaugeNamePlacementHidden)
		oneOf(c, where, "options.sizing", o.Sizing, common.BarGaugeSizingAuto, common.BarGaugeSizingManual)
		c.calcs(where, "options.reduceOptions.calcs", o.ReduceOptions.Calcs, true)
	case nil:
		c.add(where, "has no options")
	}
	return others
}
