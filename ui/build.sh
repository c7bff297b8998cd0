#!/usr/bin/env bash
# Builds the browser vendor files into static/vendor/ from the exact versions pinned in
# package.json / package-lock.json. The output is committed, so users and CI never need Node.js;
# run this only when bumping a library.  Usage: bash ui/build.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../static/vendor"
cd "$here"

npm ci --no-audit --no-fund

rm -rf "$out"
mkdir -p "$out/licenses"

esbuild="$here/node_modules/.bin/esbuild"
common=(--bundle --format=esm --minify --target=es2020 --legal-comments=eof --log-level=warning)
"$esbuild" src/graph-libs.js "${common[@]}" --outfile="$out/graph-libs.js"
"$esbuild" src/forceatlas2.js "${common[@]}" --outfile="$out/forceatlas2.js"
"$esbuild" src/uplot.js "${common[@]}" --outfile="$out/uplot.js"
cp node_modules/uplot/dist/uPlot.min.css "$out/uplot.css"
"$esbuild" src/xterm.js "${common[@]}" --outfile="$out/xterm.js"
cp node_modules/@xterm/xterm/css/xterm.css "$out/xterm.css"

# Every package that ends up in a bundle (direct and transitive) ships its licence next to it.
{
  echo "Bundled by ui/build.sh; versions pinned in ui/package-lock.json."
  for pkg in graphology graphology-utils graphology-layout-forceatlas2 sigma events uplot @xterm/xterm @xterm/addon-fit; do
    dir="node_modules/$pkg"
    version="$(node -p "require('./$dir/package.json').version")"
    license="$(node -p "require('./$dir/package.json').license")"
    lic_file="$(ls "$dir" | grep -i -E '^(licen[cs]e|copying)' | head -n 1)"
    cp "$dir/$lic_file" "$out/licenses/${pkg//\//-}.LICENSE.txt"  # @xterm/xterm -> @xterm-xterm
    echo "$pkg $version $license"
  done
} > "$out/VERSIONS.txt"

echo "built:"; (cd "$out" && ls -l . licenses)
