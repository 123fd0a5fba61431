# apt_need CMD:PACKAGE ...: installs, from Debian, the package of each
# command that is not on PATH (a CMD starting with / is a file that must
# exist), in one apt-get run. Sourced by
# install-test-deps.sh and the scripts in deps.d; waits for another apt run
# to let go of the lock rather than failing.
apt_need() {
	local need=() pair
	for pair in "$@"; do
		case $pair in
		/*) [[ -e ${pair%%:*} ]] ;;
		*) command -v "${pair%%:*}" >/dev/null 2>&1 ;;
		esac || need+=("${pair#*:}")
	done
	((${#need[@]})) || return 0
	echo "installing Debian packages: ${need[*]}"
	local sudo=
	[[ $(id -u) == 0 ]] || sudo=sudo
	$sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}
