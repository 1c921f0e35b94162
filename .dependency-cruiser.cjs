/**
 * The layer rule of docs/layout.md, checked by scripts/check_layers.ts (part of `deno task check`).
 *
 * Layers, lowest first. A module may import its own layer and the layers below it, nothing
 * above; main.ts imports only cli/ and the foundation. ops/ (doctor, metrics, the status page)
 * reads control's types and is driven by the CLI, so it sits between control/ and cli/. tests/,
 * bench/, lab/ and scripts/ are outside the rule, but nothing inside it may import them.
 */
const LAYERS = [
  { name: "ffi", path: "^ffi/" },
  { name: "foundation", path: "^src/(errors|log|version|addr)\\.ts$" },
  { name: "io", path: "^src/io/" },
  { name: "link", path: "^src/link/" },
  { name: "dataplane", path: "^src/dataplane/" },
  { name: "control", path: "^src/control/" },
  { name: "ops", path: "^src/ops/" },
  { name: "cli", path: "^src/cli/" },
  { name: "main", path: "^main\\.ts$" },
];

/** One rule per layer: nothing it imports may sit above it. */
const upward = LAYERS.slice(0, -1).map((layer, i) => ({
  name: `${layer.name}-imports-upward`,
  comment: `${layer.name} may import only ${
    LAYERS.slice(0, i + 1).map((l) => l.name).join(", ")
  } (docs/layout.md)`,
  severity: "error",
  from: { path: layer.path },
  to: { path: LAYERS.slice(i + 1).map((l) => `(${l.path})`).join("|") },
}));

module.exports = {
  forbidden: [
    ...upward,
    {
      name: "main-imports-past-cli",
      comment: "main.ts hands the command line to src/cli/: it imports cli and the foundation only",
      severity: "error",
      from: { path: "^main\\.ts$" },
      to: { path: "^ffi/|^src/(io|link|dataplane|control|ops)/" },
    },
    {
      name: "no-circular",
      comment: "a cycle, even of types only, ties two modules (and often two layers) together",
      severity: "error",
      from: { path: "^(src|ffi)/|^main\\.ts$" },
      to: { circular: true },
    },
    {
      name: "unplaced-module",
      comment: "every module of src/ belongs to a layer: add its folder to LAYERS here",
      severity: "error",
      from: { path: "^src/", pathNot: LAYERS.map((l) => `(${l.path})`).join("|") },
      to: {},
    },
    {
      name: "imports-unplaced-module",
      comment: "every module of src/ belongs to a layer: add its folder to LAYERS here",
      severity: "error",
      from: {},
      to: { path: "^src/", pathNot: LAYERS.map((l) => `(${l.path})`).join("|") },
    },
    {
      name: "imports-outside-the-product",
      comment: "the product does not import tests/, bench/, lab/ or scripts/",
      severity: "error",
      from: { path: "^(src|ffi)/|^main\\.ts$" },
      to: { path: "^(tests|bench|lab|scripts)/" },
    },
  ],
  options: {
    // Deno's npm:, node: and import-map specifiers (and what they resolve to) are not ours.
    includeOnly: "^(src|ffi|tests|bench|lab|scripts)/|^main\\.ts$",
    // Type-only imports count: a layer that needs an upper layer's types depends on it.
    tsPreCompilationDeps: true,
  },
};
