/**
 * `deno run -A scripts/check_graph.ts` (part of `deno task check`): fails, listing each finding,
 * if
 *
 * 1. local modules (main.ts, src/, ffi/) import each other in a cycle. The graph is Deno's own
 *    (`deno info --json`), rooted at main.ts and every module under tests/, bench/, scripts/
 *    and lab/; type-only imports count too, since a cycle of types still ties two layers
 *    together. Each cycle is printed as a path, type-only steps marked.
 * 2. a module of src/ or ffi/ exports a name that no other file of the repository imports.
 *    Tests count as users (a test double's exports are used by tests only); a name used only
 *    inside its own module should not be exported.
 *
 * Deno's graph says which file a specifier resolves to, not which names are imported, so names
 * come from a small scanner here: comments are blanked (strings kept), then import and export
 * statements are read with the forms TypeScript allows: `export { a, b as c }`, `export type`,
 * `export default`, declarations (`function`, `class`, `const`, `interface`, `enum`, ...),
 * `export * from` and `export { x } from`, `import X, { a as b, type c } from`,
 * `import * as ns` (names used as `ns.name`, or all of them if `ns` escapes),
 * `import("./m.ts")` (its `.name`, or all names) and `import("./m.ts").Type` in type positions.
 * Import statements inside string literals count too: tests run such code with `deno eval`
 * from the repository root.
 *
 * Exit status: 0 clean, 1 findings, 2 the check itself could not run. `--root=DIR` checks another
 * tree laid out the same way.
 */

/** The repository (`--root DIR` for another tree: the tests check fixtures with it). */
const ROOT = (Deno.args.find((a) => a.startsWith("--root="))?.slice(7) ??
  new URL("..", import.meta.url).pathname).replace(/\/$/, "");
/** Directories whose modules are graph roots, besides main.ts. */
const ROOT_DIRS = ["tests", "bench", "scripts", "lab"];
/** Where cycles are forbidden and unused exports reported. */
const CHECKED_DIRS = ["src", "ffi"];
const SKIP_DIRS = new Set(["node_modules", "dist", ".bench", "coverage", ".git"]);
const SOURCE = /\.(ts|tsx|mts|js|mjs)$/;

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/** Every source file under `dir` (absolute paths), skipping build outputs and hidden dirs. */
function walk(dir: string): string[] {
  const out: string[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(dir)];
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return out;
    throw e;
  }
  for (const e of entries) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) {
      if (!SKIP_DIRS.has(e.name) && !e.name.startsWith(".")) out.push(...walk(path));
    } else if (e.isFile && SOURCE.test(e.name)) {
      out.push(path);
    }
  }
  return out.sort();
}

const rel = (path: string) => path.startsWith(ROOT + "/") ? path.slice(ROOT.length + 1) : path;

function isChecked(path: string): boolean {
  const r = rel(path);
  return CHECKED_DIRS.some((d) => r.startsWith(d + "/"));
}

/** Local modules in which a cycle is a finding. */
function isLocalModule(path: string): boolean {
  return isChecked(path) || rel(path) === "main.ts";
}

// ---------------------------------------------------------------------------------------------
// Deno's module graph
// ---------------------------------------------------------------------------------------------

interface Edge {
  from: string;
  to: string;
  /** The import carries types only (`import type`). */
  typeOnly: boolean;
}

interface Graph {
  modules: Set<string>;
  edges: Edge[];
  /** Resolved local target per (importing file, specifier text). */
  resolved: Map<string, Map<string, string>>;
  errors: string[];
}

interface InfoDependency {
  specifier: string;
  code?: { specifier?: string; error?: string };
  type?: { specifier?: string; error?: string };
}
interface InfoModule {
  specifier: string;
  local?: string;
  error?: string;
  dependencies?: InfoDependency[];
}

function filePath(specifier: string | undefined): string | undefined {
  return specifier?.startsWith("file://")
    ? decodeURIComponent(new URL(specifier).pathname)
    : undefined;
}

/** The repository's deno.json (its import map), since the entry module lies outside it. */
function configArgs(): string[] {
  try {
    Deno.statSync(`${ROOT}/deno.json`);
    return ["--config", `${ROOT}/deno.json`];
  } catch {
    return ["--no-config"];
  }
}

/** One `deno info --json` over an entry module that imports every root. */
async function denoGraph(roots: string[]): Promise<Graph> {
  const dir = await Deno.makeTempDir({ prefix: "vnet-check-graph-" });
  try {
    const entry = `${dir}/entry.ts`;
    await Deno.writeTextFile(
      entry,
      roots.map((r) => `import ${JSON.stringify(new URL(`file://${r}`).href)};\n`).join(""),
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", ...configArgs(), entry],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw new Error(`deno info failed: ${new TextDecoder().decode(out.stderr).trim()}`);
    }
    const info = JSON.parse(new TextDecoder().decode(out.stdout)) as { modules: InfoModule[] };
    const graph: Graph = { modules: new Set(), edges: [], resolved: new Map(), errors: [] };
    for (const m of info.modules) {
      const from = filePath(m.specifier);
      if (!from || from === entry) continue;
      if (m.error) graph.errors.push(`${rel(from)}: ${m.error}`);
      graph.modules.add(from);
      const byText = new Map<string, string>();
      graph.resolved.set(from, byText);
      for (const d of m.dependencies ?? []) {
        for (const e of [d.code?.error, d.type?.error]) {
          if (e) graph.errors.push(`${rel(from)}: '${d.specifier}': ${e}`);
        }
        const code = filePath(d.code?.specifier);
        const to = code ?? filePath(d.type?.specifier);
        if (!to) continue;
        byText.set(d.specifier, to);
        graph.edges.push({ from, to, typeOnly: code === undefined });
      }
    }
    return graph;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Cycles (Tarjan's strongly connected components, then one path through each)
// ---------------------------------------------------------------------------------------------

function findCycles(graph: Graph): string[] {
  const next = new Map<string, Edge[]>();
  for (const e of graph.edges) {
    if (!isLocalModule(e.from) || !isLocalModule(e.to)) continue;
    if (!next.has(e.from)) next.set(e.from, []);
    // One edge per pair; a value import beats a type-only one.
    const list = next.get(e.from)!;
    const same = list.find((x) => x.to === e.to);
    if (!same) list.push({ ...e });
    else if (!e.typeOnly) same.typeOnly = false;
  }
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const components: string[][] = [];
  let counter = 0;
  const strongConnect = (v: string) => {
    index.set(v, counter);
    low.set(v, counter++);
    stack.push(v);
    onStack.add(v);
    for (const { to } of next.get(v) ?? []) {
      if (!index.has(to)) {
        strongConnect(to);
        low.set(v, Math.min(low.get(v)!, low.get(to)!));
      } else if (onStack.has(to)) {
        low.set(v, Math.min(low.get(v)!, index.get(to)!));
      }
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      const selfLoop = (next.get(v) ?? []).some((e) => e.to === v);
      if (component.length > 1 || selfLoop) components.push(component);
    }
  };
  for (const v of [...next.keys()].sort()) if (!index.has(v)) strongConnect(v);

  // For each component, the shortest cycle through its first module (by name), as a path.
  return components.map((component) => {
    const members = new Set(component);
    const start = [...component].sort()[0];
    const previous = new Map<string, Edge>();
    const queue = [start];
    let closing: Edge | undefined;
    while (queue.length && !closing) {
      const v = queue.shift()!;
      for (const e of next.get(v) ?? []) {
        if (!members.has(e.to)) continue;
        if (e.to === start) {
          closing = e;
          break;
        }
        if (!previous.has(e.to)) {
          previous.set(e.to, e);
          queue.push(e.to);
        }
      }
    }
    const steps: Edge[] = [closing!];
    for (let v = closing!.from; v !== start; v = previous.get(v)!.from) {
      steps.unshift(previous.get(v)!);
    }
    const path = [rel(start), ...steps.map((e) => `${e.typeOnly ? "(type) " : ""}${rel(e.to)}`)];
    const more = component.length > steps.length ? ` (${component.length} modules tangled)` : "";
    return `${path.join(" -> ")}${more}`;
  });
}

// ---------------------------------------------------------------------------------------------
// Scanning names
// ---------------------------------------------------------------------------------------------

/**
 * `source` with comments replaced by spaces (newlines kept); strings, template literals and
 * regular expression literals are kept as they are.
 */
export function blankComments(source: string): string {
  const out = source.split("");
  /** Brace depth at which each open `${` of a template literal resumes the template. */
  const templates: number[] = [];
  let depth = 0;
  /** The last significant character outside strings and comments: decides `/` (regex?). */
  let last = "";
  let lastWord = "";
  const blank = (from: number, to: number) => {
    for (let k = from; k < to; k++) if (out[k] !== "\n") out[k] = " ";
  };
  const n = source.length;
  let i = 0;
  const skipString = (quote: string) => {
    for (i++; i < n && source[i] !== quote && source[i] !== "\n"; i++) {
      if (source[i] === "\\") i++;
    }
    i++;
  };
  /** From inside a template literal: up to its end (false) or to a `${` (true). */
  const skipTemplate = (): boolean => {
    for (; i < n; i++) {
      if (source[i] === "\\") {
        i++;
      } else if (source[i] === "`") {
        i++;
        return false;
      } else if (source[i] === "$" && source[i + 1] === "{") {
        i += 2;
        return true;
      }
    }
    return false;
  };
  while (i < n) {
    const c = source[i];
    if (c === "/" && source[i + 1] === "/") {
      const end = source.indexOf("\n", i);
      blank(i, end < 0 ? n : end);
      i = end < 0 ? n : end;
    } else if (c === "/" && source[i + 1] === "*") {
      const end = source.indexOf("*/", i + 2);
      blank(i, end < 0 ? n : end + 2);
      i = end < 0 ? n : end + 2;
    } else if (c === "'" || c === '"') {
      skipString(c);
      last = c;
    } else if (c === "`") {
      i++;
      if (skipTemplate()) templates.push(depth);
      last = "`";
    } else if (c === "/" && startsRegex(last, lastWord)) {
      let inClass = false;
      for (i++; i < n && source[i] !== "\n"; i++) {
        if (source[i] === "\\") i++;
        else if (source[i] === "[") inClass = true;
        else if (source[i] === "]") inClass = false;
        else if (source[i] === "/" && !inClass) break;
      }
      i++;
      last = "/";
    } else if (c === "}" && templates.length && templates.at(-1) === depth) {
      templates.pop();
      i++;
      if (skipTemplate()) templates.push(depth);
      last = "`";
    } else {
      if (c === "{") depth++;
      else if (c === "}") depth--;
      if (/[A-Za-z0-9_$]/.test(c)) {
        let j = i;
        while (j < n && /[A-Za-z0-9_$]/.test(source[j])) j++;
        lastWord = source.slice(i, j);
        last = "a";
        i = j;
        continue;
      }
      if (!/\s/.test(c)) {
        last = c;
        lastWord = "";
      }
      i++;
    }
  }
  return out.join("");
}

/** Whether a `/` after `last` (a character) or `word` starts a regular expression literal. */
function startsRegex(last: string, word: string): boolean {
  if (last === "") return true;
  if (last === "a") {
    return [
      "return",
      "typeof",
      "case",
      "do",
      "else",
      "in",
      "of",
      "new",
      "delete",
      "void",
      "throw",
      "yield",
      "await",
    ]
      .includes(word);
  }
  return "(,=:[!&|?{};+-*%<>~^".includes(last);
}

interface Scan {
  /** Names this module exports itself (declarations, `export { }`, re-exports by name). */
  exports: Set<string>;
  /** `export * from` targets (specifier texts). */
  starFrom: string[];
  /** Names used from other modules, by specifier text; "*" means all of its exports. */
  uses: Map<string, Set<string>>;
}

const IDENT = "[A-Za-z_$][A-Za-z0-9_$]*";
const QUOTED = `(["'])([^"'\\n]+)\\`;

/** `a`, `type a`, `a as b`, `default as b` from inside braces. */
function specifiers(list: string): { name: string; alias: string }[] {
  return list.split(",").map((s) => s.trim()).filter(Boolean).map((s) => {
    const m = new RegExp(`^(?:type\\s+)?(${IDENT}|"[^"]*"|'[^']*')(?:\\s+as\\s+(${IDENT}))?$`)
      .exec(s);
    if (!m) throw new Error(`cannot read import/export specifier '${s}'`);
    const name = m[1].replace(/^["']|["']$/g, "");
    return { name, alias: m[2] ?? name };
  });
}

export function scan(source: string): Scan {
  const code = blankComments(source);
  const result: Scan = { exports: new Set(), starFrom: [], uses: new Map() };
  const use = (from: string, name: string) => {
    if (!result.uses.has(from)) result.uses.set(from, new Set());
    result.uses.get(from)!.add(name);
  };
  let m: RegExpExecArray | null;

  // Re-exports: `export * from`, `export * as ns from`, `export { a as b } from`.
  const reExport = new RegExp(
    `\\bexport\\s+(?:type\\s+)?(\\*(?:\\s+as\\s+(${IDENT}))?|\\{([^}]*)\\})\\s*from\\s*${QUOTED}4`,
    "g",
  );
  for (const m of code.matchAll(reExport)) {
    const from = m[5];
    if (m[3] !== undefined) {
      for (const s of specifiers(m[3])) {
        use(from, s.name);
        result.exports.add(s.alias);
      }
    } else if (m[2]) {
      use(from, "*");
      result.exports.add(m[2]);
    } else {
      use(from, "*");
      result.starFrom.push(from);
    }
  }
  // Local export lists: `export { a, b as c }`, `export type { T }` (no `from`).
  const localList = new RegExp(`\\bexport\\s+(?:type\\s+)?\\{([^}]*)\\}(?!\\s*from\\b)`, "g");
  for (const m of code.matchAll(localList)) {
    for (const s of specifiers(m[1])) result.exports.add(s.alias);
  }
  // Declarations.
  const declaration = new RegExp(
    `\\bexport\\s+(?:declare\\s+)?(?:default\\s+)?(?:abstract\\s+)?(?:async\\s+)?` +
      `(?:function\\s*\\*?|class|interface|type|enum|const\\s+enum|namespace|module|const|let|var)` +
      `\\s+(${IDENT})`,
    "g",
  );
  for (const m of code.matchAll(declaration)) {
    if (/\bexport\s+default\b/.test(m[0])) result.exports.add("default");
    else result.exports.add(m[1]);
  }
  // `export const { a, b: c } = ...` and `export const [a, b] = ...`.
  const destructured = /\bexport\s+(?:const|let|var)\s+([{[])([^}\]]*)[}\]]\s*=/g;
  for (const m of code.matchAll(destructured)) {
    for (const part of m[2].split(",")) {
      const name = part.split(":").pop()!.split("=")[0].trim().replace(/^\.\.\./, "");
      if (name) result.exports.add(name);
    }
  }
  if (/\bexport\s+default\b/.test(code)) result.exports.add("default");
  // `export = x` (CommonJS-style TypeScript) exports everything as one value.
  if (/\bexport\s*=/.test(code)) result.exports.add("default");

  // Static imports.
  const staticImport = new RegExp(
    `\\bimport\\s+(?:type\\s+)?([^;"'\`]*?)\\s*\\bfrom\\s*${QUOTED}2`,
    "g",
  );
  for (m of code.matchAll(staticImport)) {
    const clause = m[1].trim();
    const from = m[3];
    const braces = /\{([^}]*)\}/.exec(clause);
    if (braces) { for (const s of specifiers(braces[1])) use(from, s.name); }
    const outside = clause.replace(/\{[^}]*\}/, "").split(",").map((s) => s.trim()).filter(
      Boolean,
    );
    for (const part of outside) {
      const ns = new RegExp(`^\\*\\s*as\\s+(${IDENT})$`).exec(part);
      if (ns) {
        for (const name of namespaceUses(code, ns[1], m.index!)) use(from, name);
      } else if (new RegExp(`^${IDENT}$`).test(part)) {
        use(from, "default");
      }
    }
    if (!braces && outside.length === 0) use(from, "*");
  }
  // Side-effect imports use no names, but the module is imported.
  for (m of code.matchAll(new RegExp(`\\bimport\\s*${QUOTED}1`, "g"))) {
    if (!result.uses.has(m[2])) result.uses.set(m[2], new Set());
  }
  // Dynamic imports and `import("./m.ts").Name` types.
  const dynamic = new RegExp(
    `\\bimport\\s*\\(\\s*(["'\`])([^"'\`\\n]+)\\1\\s*\\)(\\s*\\.\\s*(${IDENT}))?`,
    "g",
  );
  for (m of code.matchAll(dynamic)) use(m[2], m[4] ?? "*");
  return result;
}

/** Names read as `ns.name`; "*" if `ns` is used in any other way (passed on whole). */
function namespaceUses(code: string, ns: string, declaredAt: number): Set<string> {
  const names = new Set<string>();
  const after = code.slice(declaredAt).replace(new RegExp(`^[^;\\n]*`), "");
  for (const m of after.matchAll(new RegExp(`(?<![.\\w$])${ns}\\b(\\s*\\.\\s*(${IDENT}))?`, "g"))) {
    names.add(m[2] ?? "*");
  }
  return names;
}

// ---------------------------------------------------------------------------------------------
// Unused exports
// ---------------------------------------------------------------------------------------------

function resolveLocal(from: string, text: string, graph: Graph): string | undefined {
  const known = graph.resolved.get(from)?.get(text);
  if (known) return known;
  let candidates: string[];
  if (text.startsWith("file://")) candidates = [filePath(text)!];
  else if (text.startsWith("./") || text.startsWith("../")) {
    // Relative to the file; else, for code in strings, as run from the repository root
    // (`deno eval` in tests) or as written into a build directory of it (the stamp module of
    // scripts/compile.ts): the path without its leading `./` and `../` steps.
    const dir = from.slice(0, from.lastIndexOf("/"));
    candidates = [
      new URL(text, `file://${dir}/`).pathname,
      new URL(text, `file://${ROOT}/`).pathname,
      `${ROOT}/${text.replace(/^(\.\.?\/)+/, "")}`,
    ];
  } else return undefined;
  return candidates.map(decodeURIComponent).find((p) => {
    try {
      return Deno.statSync(p).isFile;
    } catch {
      return false;
    }
  });
}

function findUnusedExports(files: string[], graph: Graph): string[] {
  const scans = new Map<string, Scan>();
  for (const f of files) {
    try {
      scans.set(f, scan(Deno.readTextFileSync(f)));
    } catch (e) {
      throw new Error(`${rel(f)}: ${e instanceof Error ? e.message : e}`);
    }
  }
  /** Used names per module, from other files. */
  const used = new Map<string, Set<string>>();
  const markUsed = (target: string, name: string, seen = new Set<string>()) => {
    if (seen.has(target)) return;
    seen.add(target);
    if (!used.has(target)) used.set(target, new Set());
    used.get(target)!.add(name);
    // A name not declared here may come through `export * from`: follow those.
    const s = scans.get(target);
    if (!s || (name !== "*" && s.exports.has(name))) return;
    for (const text of s.starFrom) {
      const next = resolveLocal(target, text, graph);
      if (next) markUsed(next, name, seen);
    }
  };
  for (const [file, s] of scans) {
    for (const [text, names] of s.uses) {
      const target = resolveLocal(file, text, graph);
      if (!target || target === file) continue;
      for (const name of names) markUsed(target, name);
    }
  }
  const findings: string[] = [];
  for (const [file, s] of scans) {
    if (!isChecked(file)) continue;
    const names = used.get(file) ?? new Set();
    if (names.has("*")) continue;
    const unused = [...s.exports].filter((e) => !names.has(e)).sort();
    if (unused.length) findings.push(`${rel(file)}: ${unused.join(", ")}`);
  }
  return findings;
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const all = walk(ROOT);
  const roots = [`${ROOT}/main.ts`, ...ROOT_DIRS.flatMap((d) => walk(`${ROOT}/${d}`))];
  const graph = await denoGraph(roots);
  const cycles = findCycles(graph);
  const unused = findUnusedExports(all, graph);
  let failed = false;
  const report = (title: string, lines: string[]) => {
    if (!lines.length) return;
    failed = true;
    console.error(`${title}:`);
    for (const l of lines) console.error(`  ${l}`);
  };
  report("module graph errors", graph.errors);
  report("import cycles (break each one)", cycles);
  report("exports no other file imports (unexport or delete them)", unused);
  const local = [...graph.modules].filter(isLocalModule).length;
  if (!failed) {
    console.log(`check_graph: ${local} local modules, no cycles, no unused exports`);
  }
  return failed ? 1 : 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    console.error(`check_graph: ${e instanceof Error ? e.message : e}`);
    Deno.exit(2);
  }
}
