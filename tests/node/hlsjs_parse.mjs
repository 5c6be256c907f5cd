// Parses media playlists with hls.js's own M3U8 parser (the pinned hls.js in
// node_modules) and prints what a real player sees: per fragment its media
// sequence number, discontinuity counter (cc), start time, duration and PDT.
// Input (stdin): JSON [{"url": ..., "text": ...}, ...]. Output: JSON list.
globalThis.self = globalThis;
const { M3U8Parser, PlaylistLevelType } = await import("hls.js/dist/hls.mjs");

let input = "";
for await (const chunk of process.stdin) input += chunk;
const out = [];
for (const { url, text } of JSON.parse(input)) {
  const details = M3U8Parser.parseLevelPlaylist(text, url, 0, PlaylistLevelType.MAIN, 0, null);
  out.push({
    startSN: details.startSN,
    endSN: details.endSN,
    startCC: details.startCC,
    targetduration: details.targetduration,
    fragments: details.fragments.map((f) => ({
      sn: f.sn, cc: f.cc, start: f.start, duration: f.duration,
      pdt: f.programDateTime, url: f.url,
    })),
  });
}
process.stdout.write(JSON.stringify(out));
