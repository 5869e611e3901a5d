package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/units"
	"go.yaml.in/yaml/v3"
)

// Spec is the YAML input: a list of dashboards, each a list of rows of panels.
// Field names are the YAML keys; decoding is strict (unknown keys are errors).
type Spec struct {
	Dashboards []DashboardSpec `yaml:"dashboards"`
}

type DashboardSpec struct {
	File        string    `yaml:"file"`
	UID         string    `yaml:"uid"`
	Title       string    `yaml:"title"`
	Description string    `yaml:"description"`
	Refresh     string    `yaml:"refresh"`
	Time        string    `yaml:"time"`
	Variables   []string  `yaml:"variables"`
	Rows        []RowSpec `yaml:"rows"`
}

type RowSpec struct {
	Title     string      `yaml:"title"`
	Collapsed bool        `yaml:"collapsed"`
	Panels    []PanelSpec `yaml:"panels"`
}

type PanelSpec struct {
	Title       string          `yaml:"title"`
	Type        string          `yaml:"type"`
	Description string          `yaml:"description"`
	Unit        string          `yaml:"unit"`
	Width       uint32          `yaml:"width"`
	Height      uint32          `yaml:"height"`
	Stack       bool            `yaml:"stack"`
	Min         *float64        `yaml:"min"`
	Decimals    *float64        `yaml:"decimals"`
	Thresholds  []ThresholdSpec `yaml:"thresholds"`
	// BaseColor is the colour below the first threshold (default green).
	BaseColor string       `yaml:"baseColor"`
	Targets   []TargetSpec `yaml:"targets"`
}

type ThresholdSpec struct {
	Value float64 `yaml:"value"`
	Color string  `yaml:"color"`
}

type TargetSpec struct {
	Expr    string `yaml:"expr"`
	Legend  string `yaml:"legend"`
	Instant *bool  `yaml:"instant"`
	Format  string `yaml:"format"`
}

// Panel types the generator builds (and the validator accepts besides "row").
var panelTypes = []string{"timeseries", "stat", "table", "bargauge"}

// Units a spec may use. The names come from the SDK's units package; extend
// the list when a dashboard needs another one.
var allowedUnits = []string{
	units.Short, units.Seconds, units.Milliseconds, units.BytesIEC,
	units.PercentUnit, units.Percent, units.RequestsPerSecond, units.OpsPerSecond, units.NoUnit,
}

// loadSpec reads and strictly decodes the spec file, fills in defaults and
// checks it. All problems are reported at once.
func loadSpec(path string) (*Spec, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseSpec(raw)
}

func parseSpec(raw []byte) (*Spec, error) {
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true) // a typo in a key is an error, not a silently ignored field
	var s Spec
	if err := dec.Decode(&s); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("spec is empty")
		}
		return nil, err
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("spec must be a single YAML document")
	}
	s.applyDefaults()
	if problems := s.check(); len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "\n"))
	}
	return &s, nil
}

func (s *Spec) applyDefaults() {
	for di := range s.Dashboards {
		d := &s.Dashboards[di]
		if d.Refresh == "" {
			d.Refresh = "30s"
		}
		if d.Time == "" {
			d.Time = "now-6h"
		}
		for ri := range d.Rows {
			for pi := range d.Rows[ri].Panels {
				p := &d.Rows[ri].Panels[pi]
				if p.Width == 0 {
					p.Width = 8
					if p.Type == "timeseries" {
						p.Width = 12
					}
				}
				if p.Height == 0 {
					p.Height = 8
				}
				for ti := range p.Targets {
					t := &p.Targets[ti]
					if t.Instant == nil {
						instant := p.Type != "timeseries"
						t.Instant = &instant
					}
					if t.Format == "" {
						t.Format = "time_series"
						if p.Type == "table" {
							t.Format = "table"
						}
					}
				}
			}
		}
	}
}

// check reports what the YAML decoder cannot: required values, known names,
// ranges and uniqueness. The generated JSON is validated again afterwards.
func (s *Spec) check() []string {
	var out []string
	bad := func(where, format string, args ...any) {
		out = append(out, where+": "+fmt.Sprintf(format, args...))
	}
	if len(s.Dashboards) == 0 {
		bad("spec", "no dashboards")
	}
	files, uids := map[string]bool{}, map[string]bool{}
	for di, d := range s.Dashboards {
		where := fmt.Sprintf("dashboards[%d]", di)
		switch {
		case d.File == "":
			bad(where, "file is required")
		case filepath.Base(d.File) != d.File || filepath.Ext(d.File) != ".json":
			bad(where, "file %q must be a plain file name ending in .json", d.File)
		case files[d.File]:
			bad(where, "file %q is used twice", d.File)
		}
		files[d.File] = true
		if d.UID == "" || len(d.UID) > 40 {
			bad(where, "uid must be 1 to 40 characters, got %q", d.UID)
		} else if uids[d.UID] {
			bad(where, "uid %q is used twice", d.UID)
		}
		uids[d.UID] = true
		if d.Title == "" {
			bad(where, "title is required")
		}
		if d.Description == "" {
			bad(where, "description is required")
		}
		for i, v := range d.Variables {
			if !slices.ContainsFunc(queryVariables, func(q queryVariable) bool { return q.name == v }) {
				bad(where, "unknown variable %q (known: namespace, pool, controller)", v)
			}
			if slices.Contains(d.Variables[:i], v) {
				bad(where, "variable %q is listed twice", v)
			}
		}
		if len(d.Rows) == 0 {
			bad(where, "no rows")
		}
		for ri, r := range d.Rows {
			where := fmt.Sprintf("%s.rows[%d]", where, ri)
			if r.Title == "" {
				bad(where, "title is required")
			}
			if len(r.Panels) == 0 {
				bad(where, "no panels")
			}
			for pi, p := range r.Panels {
				where := fmt.Sprintf("%s.panels[%d] %q", where, pi, p.Title)
				if p.Title == "" {
					bad(where, "title is required")
				}
				if p.Description == "" {
					bad(where, "description is required")
				}
				if !slices.Contains(panelTypes, p.Type) {
					bad(where, "type %q is not one of %v", p.Type, panelTypes)
				}
				if !slices.Contains(allowedUnits, p.Unit) {
					bad(where, "unit %q is not one of %v", p.Unit, allowedUnits)
				}
				if p.Width > 24 {
					bad(where, "width %d is more than 24", p.Width)
				}
				if p.Stack && p.Type != "timeseries" {
					bad(where, "stack is for timeseries panels only")
				}
				for i, th := range p.Thresholds {
					if th.Color == "" {
						bad(where, "thresholds[%d].color is required", i)
					}
					if i > 0 && th.Value <= p.Thresholds[i-1].Value {
						bad(where, "thresholds must have increasing values")
					}
				}
				if len(p.Targets) == 0 {
					bad(where, "no targets")
				}
				if p.Type == "table" && len(p.Targets) > 1 {
					bad(where, "a table panel takes exactly one target")
				}
				for ti, t := range p.Targets {
					if strings.TrimSpace(t.Expr) == "" {
						bad(where, "targets[%d].expr is required", ti)
					}
					if t.Format != "time_series" && t.Format != "table" {
						bad(where, "targets[%d].format %q is not time_series or table", ti, t.Format)
					}
				}
			}
		}
	}
	return out
}
