// Byte counts as people read them; shared by the CLI tables and the error messages of the caches.

/** 481792 -> '470.50 KiB (481792 bytes)'; below 1 KiB just '512 B'. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return u === 0 ? `${n} B` : `${v.toFixed(2)} ${units[u]} (${n} bytes)`;
}
