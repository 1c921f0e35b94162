/**
 * A hand-written SVG of bench medians: one small bar chart per metric, one bar per
 * configuration, a legend and the machine in the corner. No dependencies.
 */

/** metric name -> config -> median (null when no run produced it). */
export type Medians = Record<string, Record<string, number | null>>;

const COLORS: Record<string, string> = {
  "direct": "#9e9e9e",
  "vnet": "#1f77b4",
  "vnet-tcp": "#17becf",
  "vnet-tls": "#0b3d91",
  "vnet-tls-tcp": "#0e6e78",
  "vnet-libnet": "#7fb3e0",
  "openvpn-tcp": "#ff9f40",
  "openvpn-tcp-tls": "#c75000",
  "openvpn-udp-tls": "#8c564b",
};

const PANELS: [metric: string, title: string, better: "higher" | "lower"][] = [
  ["tcp LAN->VM", "TCP LAN → VM (Mbit/s)", "higher"],
  ["tcp VM->LAN", "TCP VM → LAN (Mbit/s)", "higher"],
  ["64B frames", "64-byte frames (kpps received)", "higher"],
  ["rtt idle p50", "ping RTT idle, p50 (ms)", "lower"],
  ["rtt load p50", "ping RTT under load, p50 (ms)", "lower"],
  ["cpu LAN->VM", "tunnel CPU, LAN → VM (s/GB)", "lower"],
  ["cpu VM->LAN", "tunnel CPU, VM → LAN (s/GB)", "lower"],
];

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function fmt(v: number): string {
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toFixed(3);
}

export function renderChart(
  m: Medians,
  configs: readonly string[],
  machine: { nproc: number; cpu: string; kernel: string; deno: string },
  opts: { runs: number; seconds: number; rate?: string },
): string {
  const cols = 4, pw = 250, ph = 210, pad = 14, top = 56;
  const width = cols * pw + pad;
  const rows = Math.ceil((PANELS.length + 1) / cols);
  const height = top + rows * ph + 28;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      `viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="${pad}" y="24" font-size="16" font-weight="bold">` +
      `VNET vs the wire vs OpenVPN (TAP over TCP), medians of ${opts.runs} run(s)</text>`,
    `<text x="${pad}" y="42" fill="#555">${
      esc(
        `${opts.seconds} s iperf3 tests${
          opts.rate ? `, WAN shaped to ${opts.rate}` : ", unshaped veths"
        }; ${machine.nproc} × ${machine.cpu}, Linux ${machine.kernel}, Deno ${machine.deno}`,
      )
    }</text>`,
  );
  PANELS.forEach(([metric, title, better], i) => {
    const x0 = pad + (i % cols) * pw, y0 = top + Math.floor(i / cols) * ph;
    const vals = configs.map((c) => m[metric]?.[c] ?? null);
    const max = Math.max(1e-9, ...vals.filter((v): v is number => v !== null));
    const plotH = ph - 80, plotY = y0 + 40, plotW = pw - 30;
    const bw = plotW / configs.length;
    out.push(
      `<g>`,
      `<rect x="${x0}" y="${y0}" width="${pw - 10}" height="${ph - 10}" fill="#fafafa" ` +
        `stroke="#ddd"/>`,
      `<text x="${x0 + 8}" y="${y0 + 16}" font-weight="bold">${esc(title)}</text>`,
      `<text x="${x0 + 8}" y="${y0 + 30}" font-size="10" fill="#888">${better} ` +
        `is better</text>`,
      `<line x1="${x0 + 10}" y1="${plotY + plotH}" x2="${x0 + 10 + plotW}" ` +
        `y2="${plotY + plotH}" stroke="#999"/>`,
    );
    configs.forEach((c, j) => {
      const v = vals[j];
      const bx = x0 + 10 + j * bw + bw * 0.15, bwid = bw * 0.7;
      if (v === null) {
        out.push(
          `<text x="${bx + bwid / 2}" y="${plotY + plotH - 4}" text-anchor="middle" ` +
            `fill="#aaa">n/a</text>`,
        );
        return;
      }
      const h = Math.max(1, (v / max) * (plotH - 14));
      const by = plotY + plotH - h;
      out.push(
        `<rect x="${bx.toFixed(1)}" y="${by.toFixed(1)}" width="${bwid.toFixed(1)}" ` +
          `height="${h.toFixed(1)}" fill="${COLORS[c] ?? "#666"}"><title>${esc(c)}: ${
            fmt(v)
          }</title></rect>`,
        `<text x="${(bx + bwid / 2).toFixed(1)}" y="${(by - 3).toFixed(1)}" ` +
          `text-anchor="middle">${fmt(v)}</text>`,
      );
    });
    out.push(`</g>`);
  });
  // Legend in the next free panel slot.
  const li = PANELS.length;
  const lx = pad + (li % cols) * pw + 10, ly = top + Math.floor(li / cols) * ph + 14;
  configs.forEach((c, j) => {
    out.push(
      `<rect x="${lx}" y="${ly + j * 22}" width="14" height="14" fill="${COLORS[c] ?? "#666"}"/>`,
      `<text x="${lx + 20}" y="${ly + j * 22 + 11}">${esc(c)}</text>`,
    );
  });
  out.push(
    `<text x="${pad}" y="${height - 10}" fill="#888">` +
      `deno task bench — bench/bench.ts; direct has no tunnel process, so no CPU bar</text>`,
    `</svg>`,
  );
  return out.join("\n") + "\n";
}
