/**
 * The documentation against the repository and the program (no root needed):
 *
 * - every relative link of README.md, packaging/README.md and docs/*.md names a file that exists,
 *   and its `#anchor` a heading of that file (GitHub's slugs);
 * - every `vnet ...` command they show, in a code block or in inline code, names a command that
 *   exists, and each of its `--flags` appears in that command's `--help`, as the real program
 *   prints it (`deno run -A main.ts <command> --help`).
 */
import { assert } from "./assert.ts";

const ROOT = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
const MAIN = `${ROOT}/main.ts`;

/** The pages checked, relative to the root. */
function pages(): string[] {
  const docs = [...Deno.readDirSync(`${ROOT}/docs`)]
    .filter((e) => e.isFile && e.name.endsWith(".md"))
    .map((e) => `docs/${e.name}`)
    .sort();
  return ["README.md", "packaging/README.md", ...docs];
}

/** Fenced code blocks, and the prose around them. */
function split(markdown: string): { code: string[]; prose: string } {
  const code: string[] = [];
  const prose = markdown.replace(/^(```|~~~)[^\n]*\n([\s\S]*?)^\1[ \t]*$/gm, (_, _f, body) => {
    code.push(body);
    return "";
  });
  return { code, prose };
}

/** Inline code spans of prose (single or double backticks). */
function inlineCode(prose: string): string[] {
  return [...prose.matchAll(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g)].map((m) => m[2].trim());
}

// -------------------------------------------------------------------------------------------
// Links and anchors
// -------------------------------------------------------------------------------------------

/** GitHub's anchor for a heading: its text as rendered, lowercased, punctuation dropped. */
function slug(heading: string): string {
  const text = heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, "$1") // links: their text
    .replace(/[`*]/g, "") // code and emphasis marks
    .trim()
    .toLowerCase();
  return text.replace(/[^\p{L}\p{N}\s_-]/gu, "").replace(/ /g, "-");
}

function anchors(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const m of split(markdown).prose.matchAll(/^#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    const base = slug(m[1]);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

/** Relative link targets of a page's prose: `[text](target)` and `![alt](target)`. */
function links(markdown: string): string[] {
  const prose = split(markdown).prose.replace(/`[^`\n]*`/g, "");
  return [...prose.matchAll(/\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)].map((m) => m[1])
    .filter((t) => !/^[a-z][a-z0-9+.-]*:/i.test(t));
}

function brokenLinks(page: string, markdown: string): string[] {
  const dir = page.includes("/") ? page.slice(0, page.lastIndexOf("/")) : "";
  const problems: string[] = [];
  for (const target of links(markdown)) {
    const [path, anchor] = target.split("#", 2);
    const file = path === "" ? page : normalize(dir ? `${dir}/${path}` : path);
    let text = markdown;
    if (path !== "") {
      try {
        const info = Deno.statSync(`${ROOT}/${file}`);
        if (!info.isFile) {
          if (anchor === undefined && info.isDirectory) continue;
          problems.push(`${page}: ${target}: ${file} is not a file`);
          continue;
        }
        text = file.endsWith(".md") ? Deno.readTextFileSync(`${ROOT}/${file}`) : "";
      } catch {
        problems.push(`${page}: ${target}: ${file} does not exist`);
        continue;
      }
    }
    if (anchor !== undefined && !anchors(text).has(anchor)) {
      problems.push(`${page}: ${target}: ${file} has no heading #${anchor}`);
    }
  }
  return problems;
}

function normalize(path: string): string {
  const parts: string[] = [];
  for (const p of path.split("/")) {
    if (p === "..") parts.pop();
    else if (p !== "." && p !== "") parts.push(p);
  }
  return parts.join("/");
}

// -------------------------------------------------------------------------------------------
// Commands and flags
// -------------------------------------------------------------------------------------------

/** The commands `vnet` has, and the subcommands of those that have some. */
const SUBCOMMANDS: Record<string, string[]> = {
  server: [],
  client: ["create", "list", "watch", "close", "devices", "migrate", "vxlan"],
  cert: ["ca", "issue"],
  secret: [],
  doctor: [],
};

interface DocCommand {
  where: string;
  /** The command words after `vnet`, e.g. ["client", "list"]; [] for `vnet --version`. */
  words: string[];
  flags: string[];
  text: string;
}

/**
 * The `vnet ...` commands of a page: code lines that start with `vnet` (after a prompt or a
 * `NAME=$(`), continuation lines joined, up to a comment; and inline code spans that start with
 * `vnet `. Throws on a command word vnet does not have.
 */
function commands(page: string, markdown: string): DocCommand[] {
  const { code, prose } = split(markdown);
  const texts: string[] = [];
  for (const block of code) {
    for (const line of block.replace(/\\\n/g, " ").split("\n")) {
      const m = /^\s*(?:[\w.-]*[$#]\s+)?(?:\w+=\$\()?(vnet(?:\s.*)?)$/.exec(line);
      if (m) texts.push(m[1].replace(/\s#.*$/, ""));
    }
  }
  for (const span of inlineCode(prose)) {
    if (/^vnet(\s|$)/.test(span)) texts.push(span.replace(/\s+/g, " "));
  }
  return texts.map((text) => {
    const tokens = text.split(/\s+/).slice(1);
    const words: string[] = [];
    const first = tokens[0];
    if (first !== undefined && /^[a-z]/.test(first)) {
      const subs = SUBCOMMANDS[first];
      if (!subs) throw new Error(`${page}: \`${text}\`: vnet has no command '${first}'`);
      words.push(first);
      const second = tokens[1];
      if (subs.length && second !== undefined && /^[a-z]+$/.test(second)) {
        // `vnet client ID`-like words are not commands; only client/cert take subcommands.
        if (!subs.includes(second)) {
          throw new Error(`${page}: \`${text}\`: 'vnet ${first}' has no subcommand '${second}'`);
        }
        words.push(second);
      }
    }
    const flags = [...text.matchAll(/(?<![\w-])--[a-z][a-z0-9-]*/g)].map((m) => m[0]);
    return { where: page, words, flags, text };
  });
}

const helpCache = new Map<string, Promise<string>>();

/** `vnet WORDS --help`, from the real program; throws unless it exits 0. */
function help(words: string[]): Promise<string> {
  const key = words.join(" ");
  let p = helpCache.get(key);
  if (!p) {
    p = (async () => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", MAIN, ...words, "--help"],
        env: { NO_COLOR: "1" },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder();
      if (out.code !== 0) {
        throw new Error(`vnet ${key} --help: exit ${out.code}: ${text.decode(out.stderr)}`);
      }
      return text.decode(out.stdout);
    })();
    helpCache.set(key, p);
  }
  return p;
}

/** The flags of `cmd` that its `--help` does not name. */
async function unknownFlags(cmd: DocCommand): Promise<string[]> {
  const text = await help(cmd.words);
  return cmd.flags.filter((f) => !new RegExp(`(?<![\\w-])${f}(?![\\w-])`).test(text));
}

// -------------------------------------------------------------------------------------------
// The tests
// -------------------------------------------------------------------------------------------

Deno.test("docs: every relative link and anchor resolves", () => {
  const problems = pages().flatMap((p) => brokenLinks(p, Deno.readTextFileSync(`${ROOT}/${p}`)));
  assert(problems.length === 0, `broken links:\n${problems.join("\n")}`);
});

Deno.test("docs: the link check sees a missing file and a missing heading", () => {
  const page = "docs/x.md";
  const md = "[a](security.md) [b](nothing.md) [c](security.md#no-such-heading) [d](#here)\n" +
    "## Here\n```sh\n[e](in-code.md)\n```\n[f](https://example.com/x.md)";
  const problems = brokenLinks(page, md);
  assert(problems.length === 2, problems.join("\n"));
  assert(problems[0].includes("nothing.md does not exist"), problems[0]);
  assert(problems[1].includes("no heading #no-such-heading"), problems[1]);
});

Deno.test("docs: slugs as GitHub makes them", () => {
  const cases: [string, string][] = [
    ["`vnet client list --json`, field by field", "vnet-client-list---json-field-by-field"],
    [
      "2. Host behind NAT: contact the Host (`--via host`)",
      "2-host-behind-nat-contact-the-host---via-host",
    ],
    ["Walk-through: one VM onto your LAN", "walk-through-one-vm-onto-your-lan"],
    ["As a service (systemd)", "as-a-service-systemd"],
  ];
  for (const [heading, want] of cases) {
    assert(slug(heading) === want, `${heading} -> ${slug(heading)}`);
  }
});

Deno.test("docs: every flag of every vnet command shown is in that command's --help", async () => {
  const all = pages().flatMap((p) => commands(p, Deno.readTextFileSync(`${ROOT}/${p}`)));
  assert(all.length > 40, `only ${all.length} vnet commands found in the docs`);
  console.log(`${all.length} vnet commands, ${all.flatMap((c) => c.flags).length} flags`);
  const problems: string[] = [];
  for (const cmd of all) {
    for (const flag of await unknownFlags(cmd)) {
      problems.push(
        `${cmd.where}: \`${cmd.text}\`: 'vnet ${cmd.words.join(" ")} --help' has no ${flag}`,
      );
    }
  }
  assert(problems.length === 0, `flags the program does not have:\n${problems.join("\n")}`);
});

/** Flags of other programs the docs name on their own: Deno's permissions. */
const NOT_VNET = /^--allow-/;

/** Inline spans that are flags (`--multicast`, `--via host`): flags of some vnet command. */
async function unknownLoneFlags(page: string, markdown: string): Promise<string[]> {
  const spans = inlineCode(split(markdown).prose).filter((s) => s.startsWith("--"));
  const flags = spans.flatMap((s) =>
    [...s.matchAll(/(?<![\w-])--[a-z][a-z0-9-]*/g)].map((m) => m[0])
  )
    .filter((f) => !NOT_VNET.test(f));
  const every = [
    [],
    ...Object.entries(SUBCOMMANDS).flatMap(([c, subs]) => [[c], ...subs.map((s) => [c, s])]),
  ];
  const texts = (await Promise.all(every.map(help))).join("\n");
  return [...new Set(flags)].filter((f) => !new RegExp(`(?<![\\w-])${f}(?![\\w-])`).test(texts))
    .map((f) => `${page}: \`${f}\` is a flag of no vnet command`);
}

Deno.test("docs: every flag named on its own is a flag of some vnet command", async () => {
  const problems: string[] = [];
  for (const p of pages()) {
    problems.push(...await unknownLoneFlags(p, Deno.readTextFileSync(`${ROOT}/${p}`)));
  }
  assert(problems.length === 0, problems.join("\n"));
  const made = await unknownLoneFlags(
    "x.md",
    "Use `--multicast` or `--via host`, not `--mutlicast`.",
  );
  assert(made.length === 1 && made[0].includes("--mutlicast"), made.join("\n"));
});

Deno.test("docs: the flag check sees a made-up flag and a made-up command", async () => {
  const md = "Run `vnet client list --server A:7000 --no-such-flag`.\n" +
    "```sh\n# on the Proxy\nID=$(vnet client create --proxy A:7000 \\\n  --proxy-dev lan0)\n```\n";
  const found = commands("x.md", md);
  const inline = found.find((c) => c.words[1] === "list")!;
  const block = found.find((c) => c.words[1] === "create")!;
  assert(inline.words.join(" ") === "client list", inline.words.join(" "));
  assert(block.words.join(" ") === "client create", block.words.join(" "));
  assert(block.flags.join(" ") === "--proxy --proxy-dev", block.flags.join(" "));
  const unknown = await unknownFlags(inline);
  assert(unknown.join(" ") === "--no-such-flag", `unknown: ${unknown}`);
  let threw = "";
  try {
    commands("x.md", "`vnet clinet list`");
  } catch (e) {
    threw = String(e);
  }
  assert(/no command 'clinet'/.test(threw), threw);
});
