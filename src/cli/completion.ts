/**
 * `vnet completion bash|zsh`: a completion script for the shell, made from the same flag
 * tables the parsers and the help use (SERVER_FLAGS, CLIENT_FLAGS, ...), so a new flag is
 * completed as soon as it is parsed. Install with, e.g.:
 *
 *   echo 'eval "$(vnet completion bash)"' >> ~/.bashrc
 *   echo 'eval "$(vnet completion zsh)"' >> ~/.zshrc
 */
import { VnetError } from "../errors.ts";
import { CERT_FLAGS } from "./cert.ts";
import { CLIENT_FLAGS } from "./client.ts";
import { noPositionals, parseFlags } from "./common.ts";
import { SERVER_FLAGS } from "./config.ts";
import { DOCTOR_FLAGS } from "./doctor.ts";
import { SECRET_FLAGS } from "./secret.ts";

const COMPLETION_HELP = `
vnet completion: print a shell completion script

Usage:
  vnet completion bash     then: eval "$(vnet completion bash)"  (e.g. in ~/.bashrc)
  vnet completion zsh      then: eval "$(vnet completion zsh)"   (e.g. in ~/.zshrc)

Completes commands, client and cert subcommands, each one's flags, and file names after
flags that take a file.
`;

/** A command path ("client list") and its flags, as `--name`, and those that take a file. */
interface Completions {
  words: Record<string, string[]>;
  fileFlags: string[];
}

const COMMON = ["--help", "--log-level", "--log-json"];

function flagNames(options: Record<string, unknown>): string[] {
  return [...new Set([...Object.keys(options).map((n) => `--${n}`), ...COMMON])].sort();
}

/** Every command path, its next words (subcommands, or flags), from the parsers' tables. */
export function completions(): Completions {
  const words: Record<string, string[]> = {
    "": ["server", "client", "cert", "secret", "doctor", "completion", "--help", "--version"],
    server: flagNames(Object.fromEntries(SERVER_FLAGS.map((f) => [f.name, f]))),
    client: [...Object.keys(CLIENT_FLAGS), ...flagNames(CLIENT_FLAGS.create)],
    cert: Object.keys(CERT_FLAGS),
    secret: flagNames(SECRET_FLAGS),
    doctor: flagNames(DOCTOR_FLAGS),
    completion: ["bash", "zsh"],
  };
  for (const [sub, options] of Object.entries(CLIENT_FLAGS)) {
    words[`client ${sub}`] = flagNames(options);
  }
  for (const [sub, options] of Object.entries(CERT_FLAGS)) {
    words[`cert ${sub}`] = flagNames(options);
  }
  const fileFlags = [
    ...SERVER_FLAGS.filter((f) => "path" in f || f.name === "config").map((f) => `--${f.name}`),
    "--secret-file",
    "--tls-ca",
    "--out",
    "--ca",
    "--ssh-identity",
    "--ssh-known-hosts",
  ];
  return { words, fileFlags: [...new Set(fileFlags)].sort() };
}

function bashScript(c: Completions): string {
  const cases = Object.entries(c.words)
    .map(([path, w]) => `    "${path}") words="${w.join(" ")}" ;;`).join("\n");
  return `# bash completion for vnet: eval "$(vnet completion bash)"
_vnet() {
  local cur prev cmdpath="" i w words
  cur="\${COMP_WORDS[COMP_CWORD]}"
  prev="\${COMP_WORDS[COMP_CWORD-1]}"
  case "$prev" in
    ${c.fileFlags.join("|")}) COMPREPLY=($(compgen -f -- "$cur")); return ;;
  esac
  # The command path: the words before the cursor that are not flags, up to two deep.
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    case "$w" in -*) continue ;; esac
    case "$cmdpath" in
      "") cmdpath="$w" ;;
      client|cert) case " \${_vnet_sub[$cmdpath]} " in *" $w "*) cmdpath="$cmdpath $w" ;; esac ;;
    esac
  done
  case "$cmdpath" in
${cases}
    *) words="" ;;
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
declare -A _vnet_sub=([client]="${Object.keys(CLIENT_FLAGS).join(" ")}" [cert]="${
    Object.keys(CERT_FLAGS).join(" ")
  }")
complete -o default -F _vnet vnet
`;
}

function zshScript(c: Completions): string {
  const cases = Object.entries(c.words)
    .map(([path, w]) => `    "${path}") words=(${w.join(" ")}) ;;`).join("\n");
  return `#compdef vnet
# zsh completion for vnet: eval "$(vnet completion zsh)"
_vnet() {
  # Not "path": in zsh that is $PATH.
  local cmdpath="" w prev="\${words[CURRENT-1]}"
  local -a next
  case "$prev" in
    ${c.fileFlags.join("|")}) _files; return ;;
  esac
  for w in "\${(@)words[2,CURRENT-1]}"; do
    [[ "$w" == -* ]] && continue
    if [[ -z "$cmdpath" ]]; then
      cmdpath="$w"
    elif [[ "$cmdpath" == client && " ${Object.keys(CLIENT_FLAGS).join(" ")} " == *" $w "* ]] ||
         [[ "$cmdpath" == cert && " ${Object.keys(CERT_FLAGS).join(" ")} " == *" $w "* ]]; then
      cmdpath="$cmdpath $w"
    fi
  done
  case "$cmdpath" in
${cases.replaceAll("words=", "next=")}
    *) next=() ;;
  esac
  compadd -a next
}
compdef _vnet vnet
`;
}

export function completionCommand(args: string[]): Promise<number> {
  const parsed = parseFlags(args, {}, COMPLETION_HELP, "completion");
  if (!parsed) return Promise.resolve(0);
  const [shell, ...rest] = parsed.positionals;
  noPositionals(rest, "completion");
  if (shell === "bash") console.log(bashScript(completions()));
  else if (shell === "zsh") console.log(zshScript(completions()));
  else {
    throw new VnetError(
      `${shell ? `no completion for '${shell}'` : "missing shell"}: bash or zsh ` +
        `(see 'vnet completion --help')`,
    );
  }
  return Promise.resolve(0);
}
