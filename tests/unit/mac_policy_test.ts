/**
 * The MAC policy's parts that need no device (src/control/mac_policy.ts): the operator's
 * `--allow-mac` ranges, and which LAN servers a Proxy knows of from its routes, resolver and
 * DHCP lease.
 */
import { assertEquals, assertThrows } from "./assert.ts";
import { checkAllowedMacs, lanServers, parseMacRanges } from "../../src/control/mac_policy.ts";

Deno.test("--allow-mac: byte prefixes and whole MACs; anything else is one clear line", () => {
  const ranges = parseMacRanges("52:54:00:*, 02:5E:00:00:01:01");
  assertEquals(ranges.map((r) => r.prefix), ["52:54:00:", "02:5e:00:00:01:01"]);
  checkAllowedMacs(["52:54:00:12:34:56", "02:5e:00:00:01:01"], ranges);
  assertThrows(
    () => checkAllowedMacs(["02:5e:00:00:01:02"], ranges),
    /outside this server's --allow-mac ranges \(52:54:00:\*,02:5E:00:00:01:01\)/,
  );
  checkAllowedMacs(["02:5e:00:00:01:02"], parseMacRanges(""));
  for (const bad of ["52:54:0*", "*", "52:54:00", "52:54:00:*:*", "zz:*"]) {
    assertThrows(() => parseMacRanges(bad), /bad MAC range/);
  }
});

Deno.test("LAN servers: gateways on the device, and on-link DNS and DHCP servers", () => {
  const dir = Deno.makeTempDirSync();
  const route = `${dir}/route`, resolv = `${dir}/resolv.conf`, lease = `${dir}/lease`;
  // 10.77.0.0/24 on lan0, default via 10.77.0.1 there; 10.78.0.0/24 on wan0 via 10.78.0.254.
  Deno.writeTextFileSync(
    route,
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n" +
      "lan0\t00000000\t01004D0A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n" +
      "lan0\t00004D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n" +
      "wan0\t00004E0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n" +
      "wan0\t0000000B\tFE004E0A\t0003\t0\t0\t0\t000000FF\t0\t0\t0\n",
  );
  Deno.writeTextFileSync(resolv, "search lan\nnameserver 10.77.0.53\nnameserver 9.9.9.9\n");
  Deno.writeTextFileSync(
    lease,
    "lease {\n  option routers 10.77.0.1;\n  option dhcp-server-identifier 10.77.0.2;\n" +
      "  option domain-name-servers 10.77.0.53, 10.77.0.54;\n}\n",
  );
  const found = lanServers("lan0", { route, resolv, leases: [lease, `${dir}/none`] });
  assertEquals(Object.fromEntries(found), {
    "10.77.0.1": "the default gateway",
    "10.77.0.53": "a DNS server",
    "10.77.0.2": "the DHCP server",
    "10.77.0.54": "a DNS server",
  });
  assertEquals(Object.fromEntries(lanServers("wan0", { route, resolv, leases: [] })), {
    "10.78.0.254": "a gateway",
  });
  Deno.removeSync(dir, { recursive: true });
});
