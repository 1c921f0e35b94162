/**
 * Finding and opening the native libraries (libpcap, libnet, libc).
 *
 * Libraries are opened lazily, on first use, so that commands that do not touch the network
 * (`vnet --help`, config checks) work on a machine without them. The search order is:
 * the environment override (e.g. `VNET_LIBPCAP=/opt/lib/libpcap.so`), then a list of names for
 * the current OS handed to the system loader. If nothing loads, ONE LibraryError says which
 * library, what was tried and how to install it.
 */
import { LibraryError } from "./errors.ts";

type Os = typeof Deno.build.os;

/** How to find one native library. */
export interface LibrarySpec {
  /** Human name, e.g. `libpcap`. */
  readonly name: string;
  /** Environment variable holding an explicit path, e.g. `VNET_LIBPCAP`; none for libc. */
  readonly envVar?: string;
  /** Names (or paths) tried in order, per OS; `default` for any OS not listed. */
  readonly candidates: Partial<Record<Os | "default", readonly string[]>>;
  /** How to install it, e.g. `Debian/Ubuntu: apt-get install libpcap0.8; ...`. */
  readonly install: string;
}

/** The names tried for `spec` on `os` (the environment override is not included). */
export function candidatesFor(spec: LibrarySpec, os: Os = Deno.build.os): readonly string[] {
  return spec.candidates[os] ?? spec.candidates.default ?? [];
}

function envOverride(spec: LibrarySpec): string | undefined {
  if (!spec.envVar) return undefined;
  try {
    const value = Deno.env.get(spec.envVar)?.trim();
    return value ? value : undefined;
  } catch {
    return undefined; // no --allow-env: behave as if unset
  }
}

function firstLine(e: unknown): string {
  const text = e instanceof Error ? e.message : String(e);
  return text.split("\n")[0].replace(/^(Could not open library: )+/, "");
}

/** A file name for the "set VAR=/path/to/..." hint: the shortest candidate's base name. */
function exampleFile(spec: LibrarySpec): string {
  const names = candidatesFor(spec).map((c) => c.split(/[\\/]/).pop()!);
  return names.sort((a, b) => a.length - b.length)[0] ?? spec.name;
}

/**
 * Opens `spec` with `symbols` now. Throws a LibraryError (with the loader errors as `cause`) if no
 * candidate loads. A library that is found but lacks a symbol is reported as too old.
 */
export function openLibrary<S extends Deno.ForeignLibraryInterface>(
  spec: LibrarySpec,
  symbols: S,
): Deno.DynamicLibrary<S> {
  const override = envOverride(spec);
  const tried = override ? [override] : candidatesFor(spec);
  const errors: unknown[] = [];
  for (const path of tried) {
    try {
      return Deno.dlopen(path, symbols);
    } catch (e) {
      if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
        throw new LibraryError(
          spec.name,
          `cannot load ${spec.name}: FFI is not permitted (run with --allow-ffi or -A)`,
          { cause: e },
        );
      }
      errors.push(e);
    }
  }
  const cause = errors.length === 1 ? errors[0] : new AggregateError(errors, "dlopen failed");
  // A loaded library missing a symbol means "too old", not "not installed".
  const missing = errors.map(firstLine).find((m) => /symbol/i.test(m));
  const setHint = spec.envVar ? ` or set ${spec.envVar}=/path/to/${exampleFile(spec)}` : "";
  if (missing) {
    throw new LibraryError(
      spec.name,
      `${spec.name} is unusable (${missing}): install a newer one (${spec.install})${setHint}`,
      { cause },
    );
  }
  const what = override ? `${spec.envVar}=${override}` : tried.join(", ");
  const detail = override && errors.length ? `: ${firstLine(errors[0])}` : "";
  throw new LibraryError(
    spec.name,
    `${spec.name} not found (tried ${what}${detail}): install it (${spec.install})${setHint}`,
    { cause },
  );
}

/**
 * A lazily opened library: `get()` opens it on first call and returns its symbols; a failure
 * is remembered and rethrown, so every caller sees the same clear error.
 */
export function lazyLibrary<S extends Deno.ForeignLibraryInterface>(
  spec: LibrarySpec,
  symbols: S,
): { get(): Deno.DynamicLibrary<S>["symbols"]; loaded(): boolean } {
  let lib: Deno.DynamicLibrary<S> | undefined;
  let failure: unknown;
  return {
    get() {
      if (lib) return lib.symbols;
      if (failure) throw failure;
      try {
        lib = openLibrary(spec, symbols);
      } catch (e) {
        failure = e;
        throw e;
      }
      return lib.symbols;
    },
    loaded: () => lib !== undefined,
  };
}

export const LIBPCAP: LibrarySpec = {
  name: "libpcap",
  envVar: "VNET_LIBPCAP",
  candidates: {
    linux: ["libpcap.so.1", "libpcap.so.0.8", "libpcap.so"],
    darwin: [
      "libpcap.A.dylib",
      "libpcap.dylib",
      "/opt/homebrew/opt/libpcap/lib/libpcap.dylib",
      "/usr/local/opt/libpcap/lib/libpcap.dylib",
    ],
    windows: ["wpcap.dll", "C:\\Windows\\System32\\Npcap\\wpcap.dll"],
    default: ["libpcap.so.1", "libpcap.so"],
  },
  install:
    "Debian/Ubuntu: apt-get install libpcap0.8; Fedora: dnf install libpcap; macOS: built in or brew install libpcap; Windows: install Npcap",
};

export const LIBNET: LibrarySpec = {
  name: "libnet",
  envVar: "VNET_LIBNET",
  candidates: {
    linux: ["libnet.so.9", "libnet.so.1", "libnet.so"],
    darwin: [
      "libnet.9.dylib",
      "libnet.1.dylib",
      "libnet.dylib",
      "/opt/homebrew/opt/libnet/lib/libnet.dylib",
      "/usr/local/opt/libnet/lib/libnet.dylib",
    ],
    windows: ["libnet.dll"],
    default: ["libnet.so.9", "libnet.so.1", "libnet.so"],
  },
  install:
    "Debian/Ubuntu: apt-get install libnet1; Fedora: dnf install libnet; macOS: brew install libnet",
};

/** libsodium: the encrypted UDP transport's AEADs, X25519 and HMAC (ffi/sodium.ts). */
export const LIBSODIUM: LibrarySpec = {
  name: "libsodium",
  envVar: "VNET_LIBSODIUM",
  candidates: {
    linux: ["libsodium.so.23", "libsodium.so.26", "libsodium.so"],
    darwin: [
      "libsodium.26.dylib",
      "libsodium.23.dylib",
      "libsodium.dylib",
      "/opt/homebrew/opt/libsodium/lib/libsodium.dylib",
      "/usr/local/opt/libsodium/lib/libsodium.dylib",
    ],
    windows: ["libsodium.dll"],
    default: ["libsodium.so.23", "libsodium.so.26", "libsodium.so"],
  },
  install:
    "Debian/Ubuntu: apt-get install libsodium23; Fedora: dnf install libsodium; macOS: brew install libsodium",
};

export const LIBC: LibrarySpec = {
  name: "libc",
  candidates: {
    linux: ["libc.so.6", "libc.so"],
    darwin: ["libSystem.B.dylib"],
    default: ["libc.so.7", "libc.so"],
  },
  install: "the C library should always be present",
};
