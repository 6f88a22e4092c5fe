// render: renders a Helm chart the way Helm 3's engine does, for tests on machines where no helm
// binary can be installed (issue 6). Go's text/template with sprig's functions minus the ones Helm
// removes (env, expandenv), plus Helm's own (include, tpl, required, toYaml, fromYaml, toJson,
// fromJson, lookup), the built-in objects (.Values, .Release, .Chart, .Capabilities, .Template) and
// values.schema.json checked with gojsonschema, the validator Helm 3 used up to 3.17.
//
// Built offline in GOPATH mode against Debian's packages, as test/helpers/helm.ts does: copied to
// $WORK/src/osmcertrender/ beside a go.mod of one line ("module osmcertrender"), which lets the go
// command resolve sprig's /v3 import paths ("minimal module compatibility"), then
//
//	GO111MODULE=off GOPATH=$WORK:/usr/share/gocode go build -o render .
//
// Usage:
//
//	render [-f values.yaml ...] [--name R] [--namespace NS] [--upgrade] [--kube-version v1.30.0]
//	       [--api-versions g/v,g/v/Kind] [--skip-schema-validation] CHART_DIR
//
// Output (stdout): JSON {"manifests": {"<chart>/templates/<file>": "<rendered text>"}, "notes": "…"}.
// Errors: the message on stderr, exit 1 (flags: exit 2).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/semver/v3"
	"github.com/Masterminds/sprig/v3"
	"github.com/xeipuuv/gojsonschema"
	"gopkg.in/yaml.v2"
)

// Chart.yaml with the capitalised field names templates see as .Chart (Helm's chart.Metadata).
type Chart struct {
	APIVersion   string            `yaml:"apiVersion"`
	Name         string            `yaml:"name"`
	Version      string            `yaml:"version"`
	AppVersion   string            `yaml:"appVersion"`
	KubeVersion  string            `yaml:"kubeVersion"`
	Description  string            `yaml:"description"`
	Type         string            `yaml:"type"`
	Home         string            `yaml:"home"`
	Icon         string            `yaml:"icon"`
	Keywords     []string          `yaml:"keywords"`
	Sources      []string          `yaml:"sources"`
	Annotations  map[string]string `yaml:"annotations"`
	Deprecated   bool              `yaml:"deprecated"`
	Dependencies []interface{}     `yaml:"dependencies"`
	Maintainers  []interface{}     `yaml:"maintainers"`
}

type Release struct {
	Name, Namespace, Service string
	IsInstall, IsUpgrade     bool
	Revision                 int
}

type KubeVersion struct{ Version, Major, Minor, GitVersion string }

func (k KubeVersion) String() string { return k.Version }

// APIVersions.Has takes "group/version" or "group/version/Kind", as Helm's VersionSet does.
type VersionSet []string

func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions VersionSet
}

// Built-in group/versions of a v1.30 API server (a subset of Helm's DefaultVersionSet).
var builtinAPIVersions = []string{
	"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1",
	"rbac.authorization.k8s.io/v1", "admissionregistration.k8s.io/v1", "coordination.k8s.io/v1",
	"authentication.k8s.io/v1", "authorization.k8s.io/v1", "certificates.k8s.io/v1",
	"apiextensions.k8s.io/v1", "storage.k8s.io/v1", "scheduling.k8s.io/v1", "discovery.k8s.io/v1",
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	var valueFiles multiFlag
	flag.Var(&valueFiles, "f", "values file merged over the chart's values.yaml (repeatable; later wins)")
	name := flag.String("name", "osm-cert", "release name")
	namespace := flag.String("namespace", "osm-system", "release namespace")
	upgrade := flag.Bool("upgrade", false, "render as an upgrade (IsUpgrade, Revision 2)")
	kubeVersion := flag.String("kube-version", "v1.30.0", "Capabilities.KubeVersion")
	apiVersions := flag.String("api-versions", "", "extra Capabilities.APIVersions, comma-separated")
	skipSchema := flag.Bool("skip-schema-validation", false, "as helm's --skip-schema-validation")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: render [flags] CHART_DIR")
		os.Exit(2)
	}
	out, err := render(flag.Arg(0), valueFiles, *name, *namespace, *upgrade, *kubeVersion, *apiVersions, *skipSchema)
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
	os.Stdout.Write(out)
}

func render(dir string, valueFiles []string, name, namespace string, upgrade bool, kubeVersion, extraAPIs string, skipSchema bool) ([]byte, error) {
	var chart Chart
	if err := readYAML(filepath.Join(dir, "Chart.yaml"), &chart); err != nil {
		return nil, err
	}
	if chart.APIVersion != "v2" || chart.Name == "" || chart.Version == "" {
		return nil, fmt.Errorf("Chart.yaml: apiVersion v2, name and version are required")
	}
	if chart.KubeVersion != "" {
		constraint, err := semver.NewConstraint(chart.KubeVersion)
		if err != nil {
			return nil, fmt.Errorf("Chart.yaml: kubeVersion: %w", err)
		}
		if v, err := semver.NewVersion(kubeVersion); err != nil || !constraint.Check(v) {
			return nil, fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s", chart.KubeVersion, kubeVersion)
		}
	}
	values, err := readValues(filepath.Join(dir, "values.yaml"))
	if err != nil {
		return nil, err
	}
	for _, file := range valueFiles {
		override, err := readValues(file)
		if err != nil {
			return nil, err
		}
		values = coalesce(override, values)
	}
	if !skipSchema {
		if err := validateSchema(dir, chart.Name, values); err != nil {
			return nil, err
		}
	}

	apis := VersionSet(append([]string{}, builtinAPIVersions...))
	if extraAPIs != "" {
		apis = append(apis, strings.Split(extraAPIs, ",")...)
	}
	major, minor := "1", "30"
	if parts := strings.SplitN(strings.TrimPrefix(kubeVersion, "v"), ".", 3); len(parts) >= 2 {
		major, minor = parts[0], parts[1]
	}
	revision := 1
	if upgrade {
		revision = 2
	}
	top := map[string]interface{}{
		"Values":       values,
		"Chart":        chart,
		"Release":      Release{Name: name, Namespace: namespace, Service: "Helm", IsInstall: !upgrade, IsUpgrade: upgrade, Revision: revision},
		"Capabilities": Capabilities{KubeVersion{kubeVersion, major, minor, kubeVersion}, apis},
	}

	// Every file under templates/ joins one template set (partials included), named <chart>/templates/<path>.
	t := template.New("gotpl").Option("missingkey=zero")
	t.Funcs(funcMap(t))
	var names []string
	root := filepath.Join(dir, "templates")
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		text, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		tname := path.Join(chart.Name, "templates", filepath.ToSlash(rel))
		if _, err := t.New(tname).Parse(string(text)); err != nil {
			return err
		}
		names = append(names, tname)
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(names)

	manifests := map[string]string{}
	notes := ""
	for _, tname := range names {
		base := path.Base(tname)
		// Partials (_*) are only included; Helm renders NOTES.txt apart from the manifests.
		if strings.HasPrefix(base, "_") || (!strings.HasSuffix(base, ".yaml") && !strings.HasSuffix(base, ".yml") && base != "NOTES.txt") {
			continue
		}
		top["Template"] = map[string]interface{}{"Name": tname, "BasePath": path.Join(chart.Name, "templates")}
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, tname, top); err != nil {
			return nil, err
		}
		// missingkey=zero prints "<no value>" for absent keys; Helm removes it.
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if base == "NOTES.txt" {
			notes = text
		} else if strings.TrimSpace(text) != "" {
			manifests[tname] = text
		}
	}
	return json.MarshalIndent(map[string]interface{}{"manifests": manifests, "notes": notes}, "", "  ")
}

func funcMap(t *template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env") // Helm removes these two: templates must not read the renderer's environment
	delete(f, "expandenv")
	includeDepth := 0
	f["include"] = func(name string, data interface{}) (string, error) {
		if includeDepth++; includeDepth > 1000 {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		defer func() { includeDepth-- }()
		var buf bytes.Buffer
		err := t.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		clone, err := t.Clone()
		if err != nil {
			return "", err
		}
		parsed, err := clone.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = parsed.Execute(&buf, data)
		return strings.ReplaceAll(buf.String(), "<no value>", ""), err
	}
	f["required"] = func(msg string, val interface{}) (interface{}, error) {
		if s, ok := val.(string); val == nil || (ok && s == "") {
			return val, errors.New(msg)
		}
		return val, nil
	}
	f["toYaml"] = func(v interface{}) string {
		data, err := yaml.Marshal(v)
		if err != nil {
			return "" // as Helm: errors become an empty string
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	f["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		var raw interface{}
		if err := yaml.Unmarshal([]byte(s), &raw); err != nil {
			m["Error"] = err.Error()
			return m
		}
		if v, ok := jsonish(raw).(map[string]interface{}); ok {
			return v
		}
		return m
	}
	f["toJson"] = func(v interface{}) string {
		data, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(data)
	}
	f["fromJson"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	// `helm template` has no cluster to ask: lookup finds nothing.
	f["lookup"] = func(apiVersion, kind, namespace, name string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	return f
}

// Values as Helm holds them: YAML converted through JSON, so maps have string keys and numbers are float64.
func readValues(file string) (map[string]interface{}, error) {
	var raw interface{}
	if err := readYAML(file, &raw); err != nil {
		return nil, err
	}
	if raw == nil {
		return map[string]interface{}{}, nil
	}
	m, ok := jsonish(raw).(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("%s: values must be a map", file)
	}
	data, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	out := map[string]interface{}{}
	return out, json.Unmarshal(data, &out)
}

func readYAML(file string, into interface{}) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	return nil
}

// jsonish turns yaml.v2's map[interface{}]interface{} into map[string]interface{}, recursively.
func jsonish(v interface{}) interface{} {
	switch x := v.(type) {
	case map[interface{}]interface{}:
		m := make(map[string]interface{}, len(x))
		for k, val := range x {
			m[fmt.Sprint(k)] = jsonish(val)
		}
		return m
	case []interface{}:
		for i := range x {
			x[i] = jsonish(x[i])
		}
	}
	return v
}

// coalesce merges defaults under user values as Helm does: maps merge key by key, anything else
// from the user wins, and a user null deletes the default.
func coalesce(user, defaults map[string]interface{}) map[string]interface{} {
	for key, def := range defaults {
		val, set := user[key]
		switch {
		case !set:
			user[key] = def
		case val == nil:
			delete(user, key)
		default:
			um, uok := val.(map[string]interface{})
			dm, dok := def.(map[string]interface{})
			if uok && dok {
				user[key] = coalesce(um, dm)
			}
		}
	}
	return user
}

// validateSchema reports violations in Helm's words (pkg/chartutil/jsonschema.go).
func validateSchema(dir, chartName string, values map[string]interface{}) error {
	schema, err := os.ReadFile(filepath.Join(dir, "values.schema.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	result, err := gojsonschema.Validate(gojsonschema.NewBytesLoader(schema), gojsonschema.NewGoLoader(values))
	if err != nil {
		return fmt.Errorf("values.schema.json: %w", err)
	}
	if result.Valid() {
		return nil
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "values don't meet the specifications of the schema(s) in the following chart(s):\n%s:\n", chartName)
	for _, e := range result.Errors() {
		fmt.Fprintf(&sb, "- %s\n", e)
	}
	return errors.New(strings.TrimSuffix(sb.String(), "\n"))
}
