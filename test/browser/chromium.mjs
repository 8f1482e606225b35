// The Chromium the browser tests drive: CHROMIUM_PATH, else one on PATH, else (only where that is
// possible: root on Debian/Ubuntu) Debian's chromium package is installed. Otherwise an error that
// says how to provide one.
import { spawnSync } from "node:child_process";
import { accessSync, constants, existsSync } from "node:fs";
import { delimiter, join } from "node:path";

const NAMES = ["chromium", "chromium-browser", "google-chrome-stable", "google-chrome"];
const HOW = "Install Chromium (Debian/Ubuntu: sudo apt-get install chromium; macOS: brew install --cask chromium) " +
  "or point CHROMIUM_PATH at a Chromium or Chrome executable.";

const executable = (p) => {
  try {
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
};

function onPath() {
  for (const dir of (process.env.PATH ?? "").split(delimiter).filter(Boolean)) {
    for (const name of NAMES) if (executable(join(dir, name))) return join(dir, name);
  }
  return null;
}

/** Path of a Chromium executable; `install` allows installing Debian's package when running as root. */
export function findChromium({ install = false } = {}) {
  const given = process.env.CHROMIUM_PATH;
  if (given) {
    if (!executable(given)) throw new Error(`CHROMIUM_PATH=${given} is not an executable file. ${HOW}`);
    return given;
  }
  const found = onPath();
  if (found) return found;
  const canInstall = install && process.getuid?.() === 0 && existsSync("/usr/bin/apt-get");
  if (!canInstall) throw new Error(`The browser tests need Chromium and none was found on PATH. ${HOW}`);
  console.error("[e2e] installing Debian's chromium package for the browser tests");
  const r = spawnSync("bash", ["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null"], { stdio: "inherit" });
  const path = onPath();
  if (r.status !== 0 || !path) throw new Error(`Installing Debian's chromium package failed. ${HOW}`);
  return path;
}
