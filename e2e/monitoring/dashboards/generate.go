package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/grafana/grafana-foundation-sdk/go/bargauge"
	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// Every panel and target points at the dashboard's "datasource" variable, so
// the dashboards work with whatever Prometheus the Grafana instance has.
var promDatasource = common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}

// The query variables a spec may ask for, in the order they appear on a
// dashboard. "pool" filters by $namespace, so it needs "namespace" too (the
// validator's variable-reference check enforces that).
type queryVariable struct{ name, label, query string }

var queryVariables = []queryVariable{
	{"namespace", "Namespace", `label_values(benchkite_agentpool_agents_desired, namespace)`},
	{"pool", "Pool", `label_values(benchkite_agentpool_agents_desired{namespace=~"$namespace"}, pool)`},
	{"controller", "Controller", `label_values(benchkite_reconciles_total, controller)`},
}

// generate builds every dashboard of the spec and returns file name -> JSON.
// Each result has passed validateJSON.
func generate(s *Spec) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, ds := range s.Dashboards {
		d, err := buildDashboard(ds)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ds.File, err)
		}
		raw, err := marshal(d)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ds.File, err)
		}
		if problems := validateJSON(raw); len(problems) > 0 {
			return nil, fmt.Errorf("%s: generated dashboard is invalid:\n  %s", ds.File, joinIndent(problems))
		}
		out[ds.File] = raw
	}
	return out, nil
}

func buildDashboard(ds DashboardSpec) (dashboard.Dashboard, error) {
	b := dashboard.NewDashboardBuilder(ds.Title).
		Uid(ds.UID).
		Description(ds.Description).
		Tags([]string{"benchkite"}).
		Readonly().
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		Time(ds.Time, "now").
		Refresh(ds.Refresh).
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").
			Label("Data source").
			Type("prometheus").
			Current(dashboard.VariableOption{
				Text:  dashboard.StringOrArrayOfString{String: cog.ToPtr("default")},
				Value: dashboard.StringOrArrayOfString{String: cog.ToPtr("default")},
			}))
	for _, v := range queryVariables {
		if !slices.Contains(ds.Variables, v.name) {
			continue
		}
		b.WithVariable(dashboard.NewQueryVariableBuilder(v.name).
			Label(v.label).
			Datasource(promDatasource).
			Query(dashboard.StringOrMap{String: cog.ToPtr(v.query)}).
			Definition(v.query).
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
			Sort(dashboard.VariableSortAlphabeticalAsc).
			Multi(true).
			IncludeAll(true).
			AllValue(".*").
			Current(dashboard.VariableOption{
				Text:  dashboard.StringOrArrayOfString{ArrayOfString: []string{"All"}},
				Value: dashboard.StringOrArrayOfString{ArrayOfString: []string{"$__all"}},
			}))
	}

	// Layout: a full-width row header (h 1), then its panels left to right,
	// wrapping when the next panel would pass column 24; a line is as tall as
	// its tallest panel. Ids run from 1 in that order.
	//
	// The positions are set explicitly. The SDK's builders also place panels, but
	// only those left at (0,0), and they wrap after a line overflows rather than
	// before, so they are not relied on.
	var id, y uint32
	for _, rs := range ds.Rows {
		id++
		rowY := y
		row := dashboard.NewRowBuilder(rs.Title).Id(id).GridPos(dashboard.GridPos{X: 0, Y: rowY, W: 24, H: 1})
		y++
		var x, lineH uint32
		var panels []cog.Builder[dashboard.Panel]
		for _, ps := range rs.Panels {
			if x+ps.Width > 24 {
				x, y, lineH = 0, y+lineH, 0
			}
			id++
			panels = append(panels, buildPanel(ps, id, dashboard.GridPos{X: x, Y: y, W: ps.Width, H: ps.Height}))
			x += ps.Width
			lineH = max(lineH, ps.Height)
		}
		y += lineH
		if rs.Collapsed {
			// Grafana keeps a collapsed row's panels inside the row, at the
			// positions they get when it is expanded; the next row follows
			// directly below the collapsed header.
			for _, p := range panels {
				row.WithPanel(p) // also marks the row collapsed
			}
			y = rowY + 1
			b.WithRow(row)
			continue
		}
		b.WithRow(row)
		for _, p := range panels {
			b.WithPanel(p)
		}
	}
	return b.Build()
}

// commonPanel is the part of the SDK's per-type panel builders that the
// generator uses; each builder method returns the builder itself (B).
type commonPanel[B any] interface {
	cog.Builder[dashboard.Panel]
	Id(uint32) B
	Title(string) B
	Description(string) B
	Datasource(common.DataSourceRef) B
	GridPos(dashboard.GridPos) B
	Unit(string) B
	Min(float64) B
	Decimals(float64) B
	Thresholds(cog.Builder[dashboard.ThresholdsConfig]) B
	WithTarget(cog.Builder[variants.Dataquery]) B
}

func withCommon[B commonPanel[B]](b B, ps PanelSpec, id uint32, pos dashboard.GridPos) B {
	b.Id(id).Title(ps.Title).Description(ps.Description).Datasource(promDatasource).GridPos(pos).Unit(ps.Unit)
	if ps.Min != nil {
		b.Min(*ps.Min)
	}
	if ps.Decimals != nil {
		b.Decimals(*ps.Decimals)
	}
	// Always spell out the thresholds: without them Grafana applies its own
	// default (red from 80), which would colour stat values for no reason.
	base := ps.BaseColor
	if base == "" {
		base = "green"
	}
	steps := []dashboard.Threshold{{Value: nil, Color: base}}
	for _, t := range ps.Thresholds {
		steps = append(steps, dashboard.Threshold{Value: cog.ToPtr(t.Value), Color: t.Color})
	}
	b.Thresholds(dashboard.NewThresholdsConfigBuilder().Mode(dashboard.ThresholdsModeAbsolute).Steps(steps))
	for i, ts := range ps.Targets {
		b.WithTarget(buildTarget(ts, i))
	}
	return b
}

func buildTarget(ts TargetSpec, i int) *prometheus.DataqueryBuilder {
	q := prometheus.NewDataqueryBuilder().
		Datasource(promDatasource).
		RefId(string(rune('A' + i))).
		Expr(ts.Expr).
		EditorMode(prometheus.QueryEditorModeCode).
		Format(prometheus.PromQueryFormat(ts.Format))
	if ts.Legend != "" {
		q.LegendFormat(ts.Legend)
	}
	if *ts.Instant {
		q.Instant()
	} else {
		q.Range()
	}
	return q
}

func buildPanel(ps PanelSpec, id uint32, pos dashboard.GridPos) cog.Builder[dashboard.Panel] {
	reduceLast := common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"}).Values(false)
	switch ps.Type {
	case "timeseries":
		b := withCommon(timeseries.NewPanelBuilder(), ps, id, pos).
			Legend(common.NewVizLegendOptionsBuilder().
				DisplayMode(common.LegendDisplayModeTable).
				Placement(common.LegendPlacementBottom).
				ShowLegend(true).
				Calcs([]string{"lastNotNull", "max"})).
			Tooltip(common.NewVizTooltipOptionsBuilder().
				Mode(common.TooltipDisplayModeMulti).
				Sort(common.SortOrderDescending)).
			FillOpacity(10)
		if ps.Stack {
			b.Stacking(common.NewStackingConfigBuilder().Mode(common.StackingModeNormal).Group("A")).FillOpacity(30)
		}
		return b
	case "stat":
		return withCommon(stat.NewPanelBuilder(), ps, id, pos).
			ReduceOptions(reduceLast).
			ColorMode(common.BigValueColorModeValue).
			// Stat targets are instant queries: there is no series to draw a sparkline from.
			GraphMode(common.BigValueGraphModeNone).
			JustifyMode(common.BigValueJustifyModeAuto).
			TextMode(common.BigValueTextModeAuto).
			Orientation(common.VizOrientationAuto).
			PercentChangeColorMode(common.PercentChangeColorModeStandard)
	case "table":
		// The SDK's default table footer has "reducer": null, which its own
		// strict model rejects; spell out Grafana's default instead.
		return withCommon(table.NewPanelBuilder(), ps, id, pos).
			CellHeight(common.TableCellHeightSm).
			Footer(common.NewTableFooterOptionsBuilder().Show(false).Reducer([]string{"sum"}).CountRows(false))
	case "bargauge":
		return withCommon(bargauge.NewPanelBuilder(), ps, id, pos).
			Orientation(common.VizOrientationHorizontal).
			ReduceOptions(reduceLast).
			DisplayMode(common.BarGaugeDisplayModeGradient).
			ValueMode(common.BarGaugeValueModeColor).
			NamePlacement(common.BarGaugeNamePlacementAuto).
			Sizing(common.BarGaugeSizingAuto).
			Legend(common.NewVizLegendOptionsBuilder().
				DisplayMode(common.LegendDisplayModeList).
				Placement(common.LegendPlacementBottom).
				ShowLegend(false).
				Calcs([]string{}))
	}
	panic("unreachable: panel type checked by the spec loader: " + ps.Type)
}

// marshal renders a dashboard deterministically: the SDK's struct field order,
// 2-space indent, trailing newline, and <, >, & written as themselves (the
// SDK's nested json.Marshal calls escape them to \u003c etc., which makes
// PromQL comparisons unreadable in the committed files).
func marshal(d dashboard.Dashboard) ([]byte, error) {
	raw, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, unescapeHTML(raw), "", "  "); err != nil {
		return nil, err
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

// unescapeHTML turns the \u003c, \u003e and \u0026 escapes encoding/json
// produces back into <, > and &. It walks escape sequences pairwise, so an
// escaped backslash followed by "u003c" text is left alone.
var htmlEscapes = map[string]byte{"003c": '<', "003e": '>', "0026": '&'}

func unescapeHTML(raw []byte) []byte {
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' || i+1 >= len(raw) {
			out = append(out, raw[i])
			continue
		}
		if raw[i+1] == 'u' && i+6 <= len(raw) {
			if c, ok := htmlEscapes[string(raw[i+2:i+6])]; ok {
				out = append(out, c)
				i += 5
				continue
			}
		}
		out = append(out, raw[i], raw[i+1])
		i++
	}
	return out
}
