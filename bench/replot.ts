/**
 * Redraws a chart from a results file without measuring again (e.g. after changing chart.ts):
 *   deno run -A bench/replot.ts bench/results/README-run.json bench/results/chart.svg
 */
import { renderChart } from "./chart.ts";

const [from = "bench/results/latest.json", to = "bench/results/chart.svg"] = Deno.args;
const r = JSON.parse(await Deno.readTextFile(from));
await Deno.writeTextFile(to, renderChart(r.medians, r.options.only, r.machine, r.options));
console.error(`wrote ${to} from ${from}`);
