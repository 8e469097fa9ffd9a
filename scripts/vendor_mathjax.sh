#!/usr/bin/env bash
# Vendor MathJax 3 so the built book loads no script from a CDN.
# Copies only es5/tex-mml-chtml.js and its CHTML fonts into vendor/mathjax/ (vendor/ is gitignored);
# _config.yml serves vendor/ as a static path and points mathjax_path at it.
# Idempotent: returns in well under a second when the files are already there.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=vendor/mathjax
VERSION="${MATHJAX_VERSION:-3}"
if [[ -s "$DEST/es5/tex-mml-chtml.js" && -d "$DEST/es5/output/chtml/fonts" ]]; then
    echo "vendor_mathjax: $DEST already present"
    exit 0
fi

command -v npm >/dev/null || { echo "vendor_mathjax: npm not found (apt-get install npm)" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
npm install --prefix "$TMP" --no-audit --no-fund --no-save --loglevel=error "mathjax@${VERSION}" >/dev/null
SRC="$TMP/node_modules/mathjax"
[[ -s "$SRC/es5/tex-mml-chtml.js" ]] || { echo "vendor_mathjax: mathjax@${VERSION} has no es5/tex-mml-chtml.js" >&2; exit 1; }

rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp/es5/output/chtml"
cp "$SRC/es5/tex-mml-chtml.js" "$DEST.tmp/es5/"
cp -r "$SRC/es5/output/chtml/fonts" "$DEST.tmp/es5/output/chtml/"
cp "$SRC/LICENSE" "$DEST.tmp/" 2>/dev/null || true
node -e 'console.log(require(process.argv[1]).version)' "$SRC/package.json" > "$DEST.tmp/VERSION"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "vendor_mathjax: installed mathjax $(cat "$DEST/VERSION") into $DEST"
