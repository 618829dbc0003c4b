// How the dashboard writes sizes: the same text as the CLI (`haven.cli.ops_render.mib`), so a number
// read in the page and in `haven host list` is the same number. The rule: below 1 GiB in whole MiB;
// from 1 GiB up in GiB with one decimal, a tie rounded to the even digit (Python's format). Worked
// in integers: memory is whole MiB, so tenths of a GiB are n * 10 / 1024 exactly, and float
// formatting (toFixed rounds ties up) cannot drift from the CLI.
export function fmtMiB(mib) {
  if (mib < 1024) return `${mib} MiB`;
  const scaled = mib * 10;
  let tenths = Math.floor(scaled / 1024);
  const rest = scaled % 1024;
  if (rest * 2 > 1024 || (rest * 2 === 1024 && tenths % 2 === 1)) tenths += 1;
  return `${Math.floor(tenths / 10)}.${tenths % 10} GiB`;
}

// An age as the CLI writes it (`haven.cli.ops_render.duration`): 45 s, 12 min, 3 h 5 min, 2 d 4 h.
export function fmtAge(seconds) {
  const s = Math.floor(Math.max(0, seconds));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  if (s < 172800) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

// A replica copy's state as the CLI writes it (`haven.cli.ops_render.copy_state`): syncing rounds down.
export function fmtCopy(copy) {
  if (copy.state === "syncing" && copy.progress !== null && copy.progress !== undefined) {
    return `syncing ${Math.floor(copy.progress * 100)}%`;
  }
  return copy.state === "in-sync" ? "in sync" : copy.state;
}
