// The renderer the chart tests rely on (test/helm/render.go) behaves as Helm 3's engine does, on a
// small fixture chart: each assertion is a Helm behaviour a chart author can meet (and that a
// hand-rolled renderer would easily get wrong).

import assert from "node:assert/strict";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type RenderOptions, renderChart } from "../helpers/helm.js";
import { tempDir } from "../helpers/pki.js";

const FILES: Record<string, string> = {
  "Chart.yaml":
    "apiVersion: v2\nname: fixture\nversion: 1.2.3\nappVersion: '4.5'\nkubeVersion: '>=1.25.0-0'\n",
  "values.yaml": [
    "big: 1000000",
    "nested: {keep: kept, change: old, drop: dropped}",
    'tplText: "{{ .Release.Name }}-from-tpl"',
    "empty: ''",
    "map: {b: 2, a: 1}",
  ].join("\n"),
  "templates/_helpers.tpl": '{{- define "fixture.name" -}}{{ .Chart.Name }}-{{ .Release.Name }}{{- end }}\n',
  "templates/a.yaml": [
    'include: {{ include "fixture.name" . }}',
    "big: {{ .Values.big }}",
    "keep: {{ .Values.nested.keep }}",
    "change: {{ .Values.nested.change }}",
    "drop: [{{ .Values.nested.drop }}]",
    "missing: [{{ .Values.nothing }}]",
    "tpl: {{ tpl .Values.tplText . }}",
    'lookup: {{ lookup "v1" "Secret" "ns" "name" | toJson }}',
    "template: {{ .Template.Name }} {{ .Template.BasePath }}",
    'apps: {{ .Capabilities.APIVersions.Has "apps/v1" }}',
    'monitoring: {{ .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}',
    "kube: {{ .Capabilities.KubeVersion.Version }} {{ .Capabilities.KubeVersion.Minor }}",
    "chart: {{ .Chart.Name }} {{ .Chart.Version }} {{ .Chart.AppVersion }}",
    "release: {{ .Release.Name }} {{ .Release.Namespace }} {{ .Release.Service }} {{ .Release.IsInstall }} {{ .Release.IsUpgrade }} {{ .Release.Revision }}",
    "yaml: {{ .Values.map | toYaml | nindent 2 }}",
    "json: {{ .Values.map | toJson }}",
    'fromYaml: {{ (fromYaml "x: [1, 2]").x | len }}',
    'sprig: {{ "abc" | upper | quote }} {{ list 3 1 2 | sortAlpha | join "," }}',
  ].join("\n"),
  "templates/empty.yaml": "{{- if false }}\nkind: Nothing\n{{- end }}\n",
  "templates/NOTES.txt": "Thanks for installing {{ .Chart.Name }} as {{ .Release.Name }}.\n",
};

describe("test/helm/render.go renders as Helm 3 does", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  before(async () => {
    dir = await tempDir("osm-cert-helm-fixture-");
    for (const [file, text] of Object.entries(FILES)) {
      await mkdir(join(dir.path, file, ".."), { recursive: true });
      await writeFile(join(dir.path, file), text);
    }
  });
  after(async () => {
    await dir.remove();
  });

  const render = async (options: RenderOptions = {}) => {
    const result = await renderChart({ chart: dir.path, releaseName: "rel", namespace: "ns", ...options });
    if (!result.ok) assert.fail(result.error);
    return result;
  };
  const line = (text: string | undefined, key: string): string => {
    const match = new RegExp(`^${key}: ?(.*)$`, "m").exec(text ?? "");
    assert.ok(match, `no "${key}:" line in\n${text}`);
    return match[1] ?? "";
  };

  test("built-in objects, partials, tpl, lookup, numbers as Helm holds them", async () => {
    const { manifests, notes } = await render();
    assert.deepEqual(
      Object.keys(manifests),
      ["fixture/templates/a.yaml"],
      "partials, NOTES and empty output are not manifests",
    );
    const a = manifests["fixture/templates/a.yaml"];
    assert.equal(line(a, "include"), "fixture-rel");
    assert.equal(line(a, "big"), "1e+06", "values pass through JSON: numbers are float64, as in Helm");
    assert.equal(line(a, "missing"), "[]", "a missing key renders empty, not <no value>");
    assert.equal(line(a, "tpl"), "rel-from-tpl");
    assert.equal(line(a, "lookup"), "{}", "helm template has no cluster: lookup finds nothing");
    assert.equal(line(a, "template"), "fixture/templates/a.yaml fixture/templates");
    assert.equal(line(a, "apps"), "true");
    assert.equal(line(a, "monitoring"), "false");
    assert.equal(line(a, "kube"), "v1.30.0 30");
    assert.equal(line(a, "chart"), "fixture 1.2.3 4.5");
    assert.equal(line(a, "release"), "rel ns Helm true false 1");
    assert.match(a ?? "", /^yaml: \n {2}a: 1\n {2}b: 2$/m, "toYaml sorts keys");
    assert.equal(line(a, "json"), '{"a":1,"b":2}');
    assert.equal(line(a, "fromYaml"), "2");
    assert.equal(line(a, "sprig"), '"ABC" 1,2,3');
    assert.equal(notes, "Thanks for installing fixture as rel.\n");
  });

  test("values files merge deeply; a null deletes a default; upgrade and API versions are settable", async () => {
    const { manifests } = await render({
      values: [{ nested: { change: "first", drop: null } }, { nested: { change: "second" } }],
      upgrade: true,
      apiVersions: ["monitoring.coreos.com/v1"],
    });
    const a = manifests["fixture/templates/a.yaml"];
    assert.equal(line(a, "keep"), "kept");
    assert.equal(line(a, "change"), "second", "later files win");
    assert.equal(line(a, "drop"), "[]");
    assert.equal(line(a, "release"), "rel ns Helm false true 2");
    assert.equal(line(a, "monitoring"), "true");
  });

  test("template errors exit non-zero with Helm's message: required, fail, functions Helm removes", async () => {
    const cases: [string, RegExp][] = [
      ['{{ required "empty must be set" .Values.empty }}', /error calling required: empty must be set/],
      ['{{ fail "no way" }}', /error calling fail: no way/],
      ['{{ env "HOME" }}', /function "env" not defined/],
      ['{{ expandenv "$HOME" }}', /function "expandenv" not defined/],
    ];
    for (const [template, message] of cases) {
      await writeFile(join(dir.path, "templates", "bad.yaml"), template);
      const result = await renderChart({ chart: dir.path });
      assert.equal(result.ok, false, template);
      assert.match(result.ok ? "" : result.error, message);
    }
    await rm(join(dir.path, "templates", "bad.yaml"));
  });
});
