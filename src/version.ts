/** The version users see in `vnet --version`; the commit is stamped in by `deno task compile`. */
import config from "../deno.json" with { type: "json" };

export const VERSION: string = config.version;
export const COMMIT: string = Deno.env.get("VNET_BUILD_COMMIT") ?? "dev";
