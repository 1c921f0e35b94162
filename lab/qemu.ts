/**
 * A real hypervisor guest for the lab: QEMU with a virtio-net NIC on a tap, offloads at QEMU's
 * defaults, booting a Debian cloud kernel and a busybox initramfs built from Debian packages.
 *
 * The image (`ensureGuestImage`) is built once per machine and cached under
 * `/var/cache/vnet-lab/guest` (`$VNET_GUEST_CACHE`), keyed by the package versions and the guest
 * files in lab/guest/, so a new kernel, busybox or init script makes a new image. It needs the
 * Debian registry (`apt-get download`) the first time, so it must be built outside the test
 * namespaces; building holds a lock, so parallel runs build it once.
 *
 * The guest (`startGuest`) runs in a namespace on a tap created there; it talks to the test over
 * its serial console, a unix socket (pathname sockets work across network namespaces). Its init
 * (lab/guest/init) loads virtio-net, runs a DHCP client on eth0 and then a command loop; it prints
 * marker lines the test waits for.
 *
 *   build or reuse the image:   deno run -A lab/qemu.ts
 */
import { type Ns, Proc, REPO_ROOT, run, sleep, spawn, tryRun } from "./netns.ts";

// ---------------------------------------------------------------------------------------------
// The image
// ---------------------------------------------------------------------------------------------

/** A bootable guest: a kernel and an initramfs holding busybox, the virtio modules and init. */
export interface GuestImage {
  /** The image's directory (holds vmlinuz, initrd.cpio, versions.txt). */
  dir: string;
  kernel: string;
  initrd: string;
  /** What it was built from, e.g. `linux-image-6.1.0-57-cloud-amd64=6.1.192-3 busybox-...`. */
  versions: string;
}

const CACHE_ROOT = Deno.env.get("VNET_GUEST_CACHE") ?? "/var/cache/vnet-lab/guest";
const KERNEL_META_PACKAGE = "linux-image-cloud-amd64";
const BUSYBOX_PACKAGE = "busybox-static";
const GUEST_FILES_DIR = `${REPO_ROOT}/lab/guest`;
/** The modules eth0 needs; their dependencies are read from the modules themselves. */
const ROOT_MODULES = ["virtio_pci", "virtio_net"];
/** Bump when the way the image is put together changes (the files in lab/guest are hashed). */
const BUILDER_VERSION = 1;

/** The Version and Depends of the candidate of an apt package (apt-cache needs no network). */
async function candidate(pkg: string): Promise<{ version: string; depends: string }> {
  const out = await run(null, ["apt-cache", "show", "--no-all-versions", pkg], {
    timeoutMs: 30_000,
  }).catch((e) => {
    throw new Error(
      `apt-cache knows no package ${pkg}: run 'apt-get update' (as root) and retry\n${e}`,
    );
  });
  const field = (name: string) => new RegExp(`^${name}: (.*)$`, "m").exec(out)?.[1] ?? "";
  const version = field("Version");
  if (!version) throw new Error(`apt-cache show ${pkg} gave no Version: run 'apt-get update'`);
  return { version, depends: field("Depends") };
}

/** The versioned packages the image is made of: [[name, version], ...]. */
async function resolvePackages(): Promise<[string, string][]> {
  const meta = await candidate(KERNEL_META_PACKAGE);
  const kernelPkg = /(linux-image-[^\s,(]+)/.exec(meta.depends)?.[1];
  if (!kernelPkg) {
    throw new Error(`${KERNEL_META_PACKAGE} depends on no linux-image package: ${meta.depends}`);
  }
  const kernel = await candidate(kernelPkg);
  const busybox = await candidate(BUSYBOX_PACKAGE);
  return [[kernelPkg, kernel.version], [BUSYBOX_PACKAGE, busybox.version]];
}

async function hex(data: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data as BufferSource));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A hash of the guest files and the builder version, so editing lab/guest/ rebuilds. */
async function guestFilesHash(): Promise<string> {
  const names = [...Deno.readDirSync(GUEST_FILES_DIR)].map((e) => e.name).sort();
  const parts = [`builder ${BUILDER_VERSION}`, ...ROOT_MODULES];
  for (const n of names) parts.push(n, await Deno.readTextFile(`${GUEST_FILES_DIR}/${n}`));
  return (await hex(new TextEncoder().encode(parts.join("\0")))).slice(0, 16);
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/**
 * Returns the cached guest image, building it first if the packages or the guest files changed.
 * Needs root, `apt-get` and the Debian registry the first time; afterwards only `apt-cache`.
 */
export async function ensureGuestImage(): Promise<GuestImage> {
  try {
    return await ensureImageOf(await resolvePackages());
  } catch (first) {
    // Stale or missing package lists name versions the registry no longer has (or none at
    // all): refresh them once and retry.
    const update = await tryRun(null, ["apt-get", "update", "-qq"], { timeoutMs: 300_000 });
    if (update.code !== 0) throw first;
    return await ensureImageOf(await resolvePackages());
  }
}

async function ensureImageOf(packages: [string, string][]): Promise<GuestImage> {
  const versions = packages.map(([p, v]) => `${p}=${v}`).join(" ");
  const key = (await hex(new TextEncoder().encode(`${versions} ${await guestFilesHash()}`)))
    .slice(0, 16);
  const dir = `${CACHE_ROOT}/images/${key}`;
  const image = { dir, kernel: `${dir}/vmlinuz`, initrd: `${dir}/initrd.cpio`, versions };
  if (await exists(`${dir}/versions.txt`)) return image;

  await Deno.mkdir(CACHE_ROOT, { recursive: true });
  using lock = await Deno.open(`${CACHE_ROOT}/.lock`, { create: true, write: true });
  await lockWithin(lock, 600_000);
  if (await exists(`${dir}/versions.txt`)) return image; // built while we waited
  // Holding the lock, any build dir is a leftover of a builder that died.
  for (const e of Deno.readDirSync(CACHE_ROOT)) {
    if (e.name.startsWith("build-")) {
      await Deno.remove(`${CACHE_ROOT}/${e.name}`, { recursive: true });
    }
  }
  const work = `${CACHE_ROOT}/build-${Deno.pid}`;
  try {
    await buildImage(packages, work);
    await Deno.writeTextFile(`${work}/versions.txt`, versions + "\n");
    await Deno.mkdir(`${CACHE_ROOT}/images`, { recursive: true });
    await Deno.rename(work, dir);
  } finally {
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
  return image;
}

/** flock with a deadline (Deno's lock() waits forever). */
async function lockWithin(file: Deno.FsFile, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    if (await file.tryLock(true)) return;
    if (Date.now() > deadline) {
      throw new Error(
        `another process has held ${CACHE_ROOT}/.lock for ${timeoutMs} ms while building the ` +
          `guest image: wait for it, or kill it and retry`,
      );
    }
    await sleep(500);
  }
}

/** Downloads (once) and unpacks the packages, then writes vmlinuz and initrd.cpio into `work`. */
async function buildImage(packages: [string, string][], work: string): Promise<void> {
  const debs = `${CACHE_ROOT}/debs`;
  await Deno.mkdir(debs, { recursive: true });
  const tree = `${work}/tree`;
  await Deno.mkdir(tree, { recursive: true });
  for (const [pkg, version] of packages) {
    const deb = await downloadDeb(debs, pkg, version);
    await run(null, ["dpkg-deb", "-x", deb, tree], { timeoutMs: 120_000 });
  }

  const kernelPkg = packages[0][0];
  const release = kernelPkg.replace(/^linux-image-/, "");
  await Deno.copyFile(`${tree}/boot/vmlinuz-${release}`, `${work}/vmlinuz`);

  const moduleDir = `${tree}/lib/modules/${release}`;
  const modules = loadOrder(moduleDir);
  const cpio = new Cpio();
  for (const d of ["bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "run"]) {
    cpio.dir(d);
  }
  // The kernel opens /dev/console for init before anything can mount devtmpfs.
  cpio.charDevice("dev/console", 5, 1);
  cpio.file("init", await Deno.readFile(`${GUEST_FILES_DIR}/init`), 0o755);
  cpio.file("etc/udhcpc.sh", await Deno.readFile(`${GUEST_FILES_DIR}/udhcpc.sh`), 0o755);
  cpio.file("bin/busybox", await Deno.readFile(`${tree}/bin/busybox`), 0o755);
  cpio.file(
    "etc/modules.order",
    new TextEncoder().encode(modules.map((m) => `${m.name}\n`).join("")),
  );
  for (const m of modules) {
    cpio.file(`lib/modules/${m.name}.ko`, await Deno.readFile(m.path), 0o644);
  }
  await Deno.writeFile(`${work}/initrd.cpio`, cpio.finish());
  await Deno.remove(tree, { recursive: true });
}

/** The .deb of `pkg` at `version` in `dir`, downloaded with `apt-get download` if missing. */
async function downloadDeb(dir: string, pkg: string, version: string): Promise<string> {
  // apt names files pkg_version_arch.deb with ':' in the version written as %3a.
  const prefix = `${pkg}_${version.replace(/:/g, "%3a")}_`;
  const find = () => [...Deno.readDirSync(dir)].find((e) => e.name.startsWith(prefix));
  if (!find()) {
    // apt downloads into the working directory. Its sandbox user cannot write into a root-only
    // dir: that is only a warning, apt then downloads as root.
    const child = new Deno.Command("apt-get", {
      args: ["download", "-q", `${pkg}=${version}`],
      cwd: dir,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const timer = setTimeout(() => child.kill("SIGKILL"), 300_000);
    const out = await child.output().finally(() => clearTimeout(timer));
    if (!out.success) {
      throw new Error(
        `could not download ${pkg}=${version} from the Debian registry (apt-get exit ` +
          `${out.code}): ${new TextDecoder().decode(out.stderr).trim()}`,
      );
    }
  }
  const found = find();
  if (!found) throw new Error(`apt-get download ${pkg}=${version} left no ${prefix}*.deb`);
  return `${dir}/${found.name}`;
}

interface Module {
  name: string;
  path: string;
}

/**
 * ROOT_MODULES and everything they depend on, dependencies first. The package ships no
 * modules.dep (depmod runs at install), so the dependencies are read from each module's
 * `.modinfo` strings (`depends=a,b`).
 */
function loadOrder(moduleDir: string): Module[] {
  const paths = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of Deno.readDirSync(d)) {
      if (e.isDirectory) walk(`${d}/${e.name}`);
      else if (e.name.endsWith(".ko")) {
        paths.set(e.name.slice(0, -3).replace(/-/g, "_"), `${d}/${e.name}`);
      }
    }
  };
  walk(`${moduleDir}/kernel`);
  const builtin = new Set(
    Deno.readTextFileSync(`${moduleDir}/modules.builtin`).split("\n")
      .map((l) => l.split("/").pop()!.replace(/\.ko$/, "").replace(/-/g, "_")),
  );
  const order: Module[] = [];
  const seen = new Set<string>();
  const latin1 = new TextDecoder("latin1");
  const visit = (name: string) => {
    if (seen.has(name) || builtin.has(name)) return;
    seen.add(name);
    const path = paths.get(name);
    if (!path) throw new Error(`kernel module ${name} is not in ${moduleDir}`);
    const info = latin1.decode(Deno.readFileSync(path));
    const deps = /(?:^|\0)depends=([^\0]*)\0/.exec(info)?.[1] ?? "";
    for (const d of deps.split(",").filter(Boolean)) visit(d.replace(/-/g, "_"));
    order.push({ name, path });
  };
  for (const m of ROOT_MODULES) visit(m);
  return order;
}

/** A cpio archive in the "newc" format the kernel unpacks as initramfs (no cpio tool needed). */
class Cpio {
  private readonly chunks: Uint8Array[] = [];
  private ino = 1;
  private readonly enc = new TextEncoder();

  dir(name: string): void {
    this.entry(name, 0o040755, new Uint8Array(0));
  }

  file(name: string, data: Uint8Array, perm = 0o644): void {
    this.entry(name, 0o100000 | perm, data);
  }

  charDevice(name: string, major: number, minor: number): void {
    this.entry(name, 0o020600, new Uint8Array(0), major, minor);
  }

  finish(): Uint8Array {
    this.entry("TRAILER!!!", 0, new Uint8Array(0));
    const total = this.chunks.reduce((n, c) => n + c.length, 0);
    const out = new Uint8Array(total);
    let at = 0;
    for (const c of this.chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }

  private entry(name: string, mode: number, data: Uint8Array, rmajor = 0, rminor = 0): void {
    const h = (n: number) => n.toString(16).padStart(8, "0");
    const nameBytes = this.enc.encode(name + "\0");
    const fields = [
      this.ino++,
      mode,
      0, // uid
      0, // gid
      mode & 0o040000 ? 2 : 1, // nlink
      0, // mtime: fixed, so the same inputs give the same archive
      data.length,
      0, // devmajor
      0, // devminor
      rmajor,
      rminor,
      nameBytes.length,
      0, // check
    ];
    const header = this.enc.encode("070701" + fields.map(h).join(""));
    this.chunks.push(
      header,
      nameBytes,
      pad(header.length + nameBytes.length),
      data,
      pad(data.length),
    );
  }
}

function pad(length: number): Uint8Array {
  return new Uint8Array((4 - (length % 4)) % 4);
}

// ---------------------------------------------------------------------------------------------
// Accelerator: KVM only where it boots this kernel
// ---------------------------------------------------------------------------------------------

export type Accel = "kvm" | "tcg";

/**
 * KVM if /dev/kvm boots the image within a few seconds, else TCG. Some machines have a /dev/kvm
 * that cannot boot a stock kernel (kvm_pvm), so the answer is probed once per host kernel and
 * guest packages, and cached. `$VNET_GUEST_ACCEL=kvm|tcg` overrides.
 */
export async function guestAccel(image: GuestImage): Promise<Accel> {
  const forced = Deno.env.get("VNET_GUEST_ACCEL");
  requireQemu();
  if (forced === "kvm" || forced === "tcg") return forced;
  if (!(await exists("/dev/kvm"))) return "tcg";
  // The answer depends on the host's kernel and the guest's packages, not on the guest's files.
  const packagesKey = (await hex(new TextEncoder().encode(image.versions))).slice(0, 16);
  const cached = `${CACHE_ROOT}/accel-${Deno.osRelease()}-${packagesKey}`;
  const known = await Deno.readTextFile(cached).catch(() => "");
  if (known.trim() === "kvm" || known.trim() === "tcg") return known.trim() as Accel;
  const accel: Accel = (await bootsWith(image, "kvm", 10_000)) ? "kvm" : "tcg";
  await Deno.writeTextFile(cached, accel + "\n");
  return accel;
}

/** Boots the image without a NIC and reports whether init ran within `timeoutMs`. */
async function bootsWith(image: GuestImage, accel: Accel, timeoutMs: number): Promise<boolean> {
  const p = spawn(null, [
    ...qemuArgs(image, accel),
    "-nic",
    "none",
    "-serial",
    "stdio",
  ]);
  try {
    await p.waitForLine(/VNET-GUEST-BOOTED/, timeoutMs);
    return true;
  } catch {
    return false;
  } finally {
    await p.kill("SIGKILL");
  }
}

const QEMU = "qemu-system-x86_64";

/** Throws, saying which package to install, unless qemu is on PATH. */
function requireQemu(): void {
  const dirs = (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":");
  const found = dirs.some((d) => {
    try {
      return Deno.statSync(`${d}/${QEMU}`).isFile;
    } catch {
      return false;
    }
  });
  if (!found) {
    throw new Error(`${QEMU} is not on PATH: install it with 'apt-get install qemu-system-x86'`);
  }
}

function qemuArgs(image: GuestImage, accel: Accel): string[] {
  return [
    QEMU,
    "-accel",
    accel,
    "-m",
    "256",
    "-smp",
    "1",
    "-nodefaults",
    "-display",
    "none",
    "-no-reboot",
    "-kernel",
    image.kernel,
    "-initrd",
    image.initrd,
    // panic=-1 with -no-reboot: a guest that panics ends qemu instead of hanging.
    "-append",
    "console=ttyS0 panic=-1 quiet",
  ];
}

// ---------------------------------------------------------------------------------------------
// The running guest
// ---------------------------------------------------------------------------------------------

export interface GuestOptions {
  /** The tap to create in the namespace for the guest's NIC (e.g. `vmtap0`). */
  tap: string;
  /** The NIC's MAC address. */
  mac: string;
  /** A name for messages and the console socket (e.g. `guest1`). */
  name: string;
  /** Register qemu here too (e.g. `topo.procs`), so a topology's cleanup kills it. */
  procs?: Proc[];
  /** Directory for the console socket (default: a new temp dir, removed by stop()). */
  dir?: string;
  /** Use this image instead of ensureGuestImage(). */
  image?: GuestImage;
}

export interface GuestResult {
  code: number;
  output: string;
}

export interface Guest {
  readonly name: string;
  readonly mac: string;
  readonly tap: string;
  readonly ns: Ns;
  readonly accel: Accel;
  /** performance.now() when qemu was started. */
  readonly startedAt: number;
  readonly proc: Proc;
  /** Waits for a console line matching `re` (searching from the first line); returns the match. */
  waitFor(re: RegExp, timeoutMs: number): Promise<RegExpExecArray>;
  /** Runs one shell command line on the guest's console; returns its exit code and output. */
  run(command: string, timeoutMs: number): Promise<GuestResult>;
  /** The whole console so far, for failure messages. */
  consoleText(): string;
  /** Kills qemu, removes the tap and the console socket. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Creates `tap` in namespace `ns` and boots the guest on it (virtio-net, vhost off, offloads at
 * QEMU's defaults). Returns once qemu runs and its console is connected; wait for
 * `VNET-GUEST-READY` / `LEASE` with `waitFor`. On failure everything started is undone.
 */
export async function startGuest(ns: Ns, opts: GuestOptions): Promise<Guest> {
  const image = opts.image ?? await ensureGuestImage();
  const accel = await guestAccel(image);
  const ownDir = opts.dir === undefined;
  // Named like a topology's dir (vnt-<pid>-<n>-, n = 0 is never a topology), so that
  // removeLeftovers() finds it after a dead run.
  const dir = opts.dir ?? await Deno.makeTempDir({ prefix: `vnt-${Deno.pid}-0-qemu-` });
  const socket = `${dir}/${opts.name}.console`;
  await run(ns, ["ip", "tuntap", "add", "dev", opts.tap, "mode", "tap"]);
  await run(ns, ["ip", "link", "set", opts.tap, "up"]);
  const startedAt = performance.now();
  const proc = spawn(ns, [
    ...qemuArgs(image, accel),
    "-name",
    opts.name,
    "-netdev",
    `tap,id=n0,ifname=${opts.tap},script=no,downscript=no,vhost=off`,
    "-device",
    `virtio-net-pci,netdev=n0,mac=${opts.mac}`,
    // wait=on: the guest starts only once we listen, so no console line is lost.
    "-chardev",
    `socket,id=console,path=${socket},server=on,wait=on`,
    "-serial",
    "chardev:console",
  ]);
  opts.procs?.push(proc);
  const guest = new RunningGuest(opts, ns, accel, startedAt, proc, socket, ownDir ? dir : null);
  try {
    await guest.connect(15_000);
  } catch (e) {
    await guest.stop();
    throw e;
  }
  return guest;
}

class RunningGuest implements Guest {
  readonly name: string;
  readonly mac: string;
  readonly tap: string;
  private readonly lines: string[] = [];
  private waiters: (() => void)[] = [];
  private conn?: Deno.UnixConn;
  private reader?: Promise<void>;
  private nextId = 1;
  private queue: Promise<unknown> = Promise.resolve();
  private stopped = false;

  constructor(
    opts: GuestOptions,
    readonly ns: Ns,
    readonly accel: Accel,
    readonly startedAt: number,
    readonly proc: Proc,
    private readonly socket: string,
    private readonly ownDir: string | null,
  ) {
    this.name = opts.name;
    this.mac = opts.mac;
    this.tap = opts.tap;
    proc.exited.then(() => this.notify());
  }

  /** Connects to the console socket once qemu listens on it. */
  async connect(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.conn) {
      try {
        this.conn = await Deno.connect({ transport: "unix", path: this.socket });
      } catch (e) {
        if (this.proc.exitCode !== null) {
          throw new Error(
            `qemu for ${this.name} exited (code ${this.proc.exitCode}) before its console ` +
              `was up:\n${this.proc.output()}`,
          );
        }
        if (Date.now() > deadline) {
          throw new Error(
            `no console socket ${this.socket} from qemu within ${timeoutMs} ms: ${e}`,
          );
        }
        await sleep(50);
      }
    }
    this.reader = this.pump(this.conn);
  }

  private async pump(conn: Deno.UnixConn): Promise<void> {
    const td = new TextDecoder();
    let buf = "";
    try {
      for await (const chunk of conn.readable) {
        buf += td.decode(chunk, { stream: true });
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          this.lines.push(buf.slice(0, i).replace(/\r$/, ""));
          buf = buf.slice(i + 1);
        }
        this.notify();
      }
    } catch { /* the socket was closed by stop() or qemu */ }
    if (buf) this.lines.push(buf.replace(/\r$/, ""));
    this.notify();
  }

  private notify(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  consoleText(): string {
    return this.lines.join("\n");
  }

  private tail(n = 30): string {
    return this.lines.slice(-n).map((l) => `    ${l}`).join("\n");
  }

  /** Waits until a console line from index `from` on matches; returns [match, line index]. */
  private async waitFrom(
    re: RegExp,
    from: number,
    timeoutMs: number,
  ): Promise<[RegExpExecArray, number]> {
    const deadline = Date.now() + timeoutMs;
    let seen = from;
    while (true) {
      for (; seen < this.lines.length; seen++) {
        const m = re.exec(this.lines[seen]);
        if (m) return [m, seen];
      }
      if (this.proc.exitCode !== null) {
        throw new Error(
          `${this.name}: qemu exited (code ${this.proc.exitCode}) before the console showed ` +
            `${re}\n  console:\n${this.tail()}\n  qemu:\n${this.proc.output()}`,
        );
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `${this.name}: no console line matching ${re} within ${timeoutMs} ms (accel ` +
            `${this.accel})\n  console:\n${this.tail()}`,
        );
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
    }
  }

  async waitFor(re: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
    return (await this.waitFrom(re, 0, timeoutMs))[0];
  }

  run(command: string, timeoutMs: number): Promise<GuestResult> {
    if (/[\r\n]/.test(command)) throw new Error(`guest command must be one line: ${command}`);
    // One command at a time: the console is a single stream.
    const result = this.queue.then(() => this.runNow(command, timeoutMs));
    this.queue = result.catch(() => {});
    return result;
  }

  private async runNow(command: string, timeoutMs: number): Promise<GuestResult> {
    if (!this.conn || this.stopped) throw new Error(`${this.name} is not running`);
    const id = this.nextId++;
    const from = this.lines.length;
    await this.conn.write(new TextEncoder().encode(`${id} ${command}\n`));
    const [, begin] = await this.waitFrom(new RegExp(`^VNET-BEGIN ${id}$`), from, timeoutMs);
    const [end, endAt] = await this.waitFrom(
      new RegExp(`^VNET-END ${id} (\\d+)$`),
      begin + 1,
      timeoutMs,
    );
    return { code: Number(end[1]), output: this.lines.slice(begin + 1, endAt).join("\n") };
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.proc.kill("SIGTERM", 2000).catch(() => {});
    try {
      this.conn?.close();
    } catch { /* already closed */ }
    await this.reader;
    await tryRun(this.ns, ["ip", "link", "del", this.tap], { timeoutMs: 5000 });
    await Deno.remove(this.socket).catch(() => {});
    if (this.ownDir) await Deno.remove(this.ownDir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  // Build (or find) the image before any test enters a namespace, and probe the accelerator.
  const image = await ensureGuestImage();
  const accel = await guestAccel(image);
  console.log(`guest image ${image.dir} (${image.versions}), accel ${accel}`);
}
