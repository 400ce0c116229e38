// Launches the system's headless Chromium the way every browser test does:
// no sandbox (containers), no GPU, no background traffic, no QUIC.
import { chromium } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-quic",
];

/** Headless Chromium with the common flags and `extraFlags`. */
export function launchChromium(extraFlags = []) {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...FLAGS, ...extraFlags] });
}
