#!/usr/bin/env bash
# Builds the Debian package dist/tandem_<version>_<arch>.deb (what `make package` runs, after the
# BPF objects and the debug build). Files (packaging/ holds the sources):
#   /usr/bin/tandem                      release build, Swift standard library linked statically
#   /usr/lib/tandem/tandem_lb.o          the datapath, found beside the binary by default
#   /lib/systemd/system/tandem.service   the unit (not enabled or started on install)
#   /etc/tandem/config.yaml              commented example of every setting (a conffile)
#   /var/lib/tandem/                     the state directory (mode 0700)
#   /usr/share/man/man8/tandem.8.gz      from the --help texts (argument-parser's generate-manual)
#   /usr/share/doc/tandem/               README.md, the example config
# Depends: is derived from the binary's NEEDED libraries (dpkg-shlibdeps); the build fails if the
# binary needs a Swift runtime library or any library that no Debian package holds.
# Only a release build is packed: a debug build does not link with --static-swift-stdlib
# (Swift 6.3.1: FoundationNetworking's CFURLSession symbols are left undefined).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for tool in dpkg-deb dpkg-shlibdeps readelf strip gzip git; do
    command -v "$tool" >/dev/null || { echo "package: $tool not found (make deps)" >&2; exit 1; }
done
log() { printf '[package] %s\n' "$*" >&2; }

version="$(bash scripts/package-version.sh)"
arch="$(dpkg --print-architecture)"
out="dist/tandem_${version}_${arch}.deb"

[[ -f bpf/obj/tandem_lb.o ]] || { echo "package: bpf/obj/tandem_lb.o missing (make bpf)" >&2; exit 1; }

# The man page first: the plugin builds every product in the debug configuration (already built
# by `make build`) and would relink the debug tandem without the static standard library.
t0=$SECONDS
swift package generate-manual --configuration debug --section 8 --authors "Tandem developers" >.build/package-manual.log 2>&1 ||
    { tail -n 30 .build/package-manual.log >&2; echo "package: generate-manual failed" >&2; exit 1; }
manual=".build/plugins/GenerateManual/outputs/tandem/tandem.8"
[[ -s "$manual" ]] || { echo "package: $manual was not generated" >&2; exit 1; }
log "man page: $((SECONDS - t0)) s"

# A build directory of its own: modules compiled for the static standard library do not link
# dynamically (and the reverse), and SwiftPM does not rebuild them when the flag changes, so
# sharing .build with `make build` / `make release` would break whichever ran second.
t0=$SECONDS
swift build --scratch-path .build-package -c release --product tandem --static-swift-stdlib
bin="$(swift build --scratch-path .build-package -c release --product tandem --static-swift-stdlib --show-bin-path)/tandem"
log "swift build -c release --product tandem --static-swift-stdlib: $((SECONDS - t0)) s"

# No Swift runtime library, no library from the toolchain, no run path into it.
needed="$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
if grep -E '^(libswift|libFoundation|lib_Foundation|libdispatch|libBlocksRuntime|libicu|libXCTest|libTesting)' <<<"$needed"; then
    echo "package: $bin needs the Swift runtime libraries above: not linked statically" >&2
    exit 1
fi
if readelf -d "$bin" | grep -E '\((RPATH|RUNPATH)\)' | grep -qE 'swift|/opt/'; then
    echo "package: $bin has a run path into the toolchain: $(readelf -d "$bin" | grep -E 'RPATH|RUNPATH')" >&2
    exit 1
fi

stage="$(mktemp -d /tmp/tandem-package.XXXXXX)"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
install -D -m 0755 "$bin" "$root/usr/bin/tandem"
strip --strip-unneeded "$root/usr/bin/tandem"
# The object keeps its BTF and relocations (libbpf needs them): not stripped.
install -D -m 0644 bpf/obj/tandem_lb.o "$root/usr/lib/tandem/tandem_lb.o"
install -D -m 0644 packaging/tandem.service "$root/lib/systemd/system/tandem.service"
install -D -m 0644 packaging/config.yaml "$root/etc/tandem/config.yaml"
install -d -m 0700 "$root/var/lib/tandem"
install -d -m 0755 "$root/usr/share/man/man8" "$root/usr/share/doc/tandem"
gzip -9n <"$manual" >"$root/usr/share/man/man8/tandem.8.gz"
gzip -9n <README.md >"$root/usr/share/doc/tandem/README.md.gz"
install -m 0644 packaging/config.yaml "$root/usr/share/doc/tandem/config.yaml.example"

# Depends: the packages holding the libraries the binary links, with the minimum versions their
# symbols files give. dpkg-shlibdeps fails on a library no package holds.
mkdir -p "$stage/src/debian"
printf 'Source: tandem\n\nPackage: tandem\nArchitecture: any\n' >"$stage/src/debian/control"
depends="$(cd "$stage/src" && dpkg-shlibdeps -O -e"$root/usr/bin/tandem" 2>"$stage/shlibdeps.err")" ||
    { cat "$stage/shlibdeps.err" >&2; echo "package: dpkg-shlibdeps failed" >&2; exit 1; }
depends="${depends#shlibs:Depends=}"
[[ -n "$depends" ]] || { echo "package: no Depends derived" >&2; exit 1; }
log "NEEDED: $(tr '\n' ' ' <<<"$needed")"
log "Depends: $depends"

mkdir -p "$root/DEBIAN"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@INSTALLED_SIZE@|$size|" -e "s|@DEPENDS@|$depends|" \
    packaging/debian/control.in >"$root/DEBIAN/control"
install -m 0644 packaging/debian/conffiles "$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "packaging/debian/$s" "$root/DEBIAN/$s"; done

mkdir -p dist
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
log "built $out: $(du -k "$out" | cut -f1) KiB (installed $size KiB)"
echo "$out"
