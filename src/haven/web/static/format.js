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
