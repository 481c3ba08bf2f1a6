#!/bin/sh
# Prints the package's /usr/share/doc/relinkd/copyright (machine-readable,
# DEP-5) from the repository's LICENSE, or with --license only the
# license's short name. Run from the repository's top directory.
set -eu

name() {
	if [ ! -e LICENSE ]; then
		echo "none"
		return
	fi
	case "$(head -n 5 LICENSE)" in
	*"Apache License"*) echo "Apache-2.0" ;;
	*"MIT License"* | *"Permission is hereby granted, free of charge"*) echo "Expat" ;;
	*"BSD 3-Clause"*) echo "BSD-3-clause" ;;
	*"BSD 2-Clause"*) echo "BSD-2-clause" ;;
	*"GNU GENERAL PUBLIC LICENSE"*"Version 3"* | *"GNU GENERAL PUBLIC LICENSE"*) echo "GPL" ;;
	*) echo "custom" ;;
	esac
}

if [ "${1:-}" = --license ]; then
	name
	exit 0
fi

lic=$(name)
cat <<HEADER
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: relinkd
Source: https://github.com/relinkd/relinkd

Files: *
Copyright: 2026 the relinkd authors
License: $lic

HEADER
echo "License: $lic"
if [ "$lic" = Apache-2.0 ]; then
	# Debian policy 12.5: licenses in /usr/share/common-licenses are
	# referred to, not copied.
	echo " Licensed under the Apache License, Version 2.0. On Debian systems the full"
	echo " text is in /usr/share/common-licenses/Apache-2.0."
elif [ -e LICENSE ]; then
	# DEP-5 license text: every line indented, empty lines as " .".
	sed -e 's/^[[:space:]]*$/./' -e 's/^/ /' LICENSE
else
	echo " The repository this package was built from has no LICENSE file: no"
	echo " license has been granted yet."
fi
