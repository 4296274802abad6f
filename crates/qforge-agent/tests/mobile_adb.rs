//! The adb device layer through a real process: a fake `adb` (a shell script standing in for
//! the adb binary; there is no phone here) logs every argv, answers `dumpsys input_method`, and
//! serves files on `pull`, so the exact command lines the agent sends are checked end to end.

use std::path::Path;

use qforge_agent::mobile::adb::{AdbDevice, Device, DeviceError};

/// Held by every test here for its whole run: a test that writes its fake adb while another
/// forks a process can have the write handle leak into that child until it execs, and then its
/// own exec of the script fails with "Text file busy" (ETXTBSY).
static PROCESSES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    PROCESSES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn fake_adb(dir: &Path, connected: bool) -> std::path::PathBuf {
    let script = dir.join("adb");
    let body = if connected {
        r#"#!/bin/sh
printf '%s\n' "$*" >> "$(dirname "$0")/argv.log"
case "$*" in
  *"dumpsys input_method"*) echo "  mInputShown=true mShowRequested=true" ;;
  "-s emulator-5554 pull /sdcard/screenshot.png "*|"pull /sdcard/screenshot.png "*) for last; do :; done; cp "$(dirname "$0")/screen.png" "$last" ;;
  *"pull /sdcard/window_dump.xml "*) for last; do :; done; printf '<hierarchy><node text="OK" bounds="[0,0][10,10]"/></hierarchy>' > "$last" ;;
esac
exit 0
"#
    } else {
        "#!/bin/sh\necho 'error: no devices/emulators found' >&2\nexit 1\n"
    };
    std::fs::write(&script, body).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[test]
fn every_operation_reaches_adb_as_the_released_command_line() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("screen.png"), b"\x89PNG fake").unwrap();
    let mut device = AdbDevice::new(fake_adb(dir.path(), true), dir.path());
    device.serial = Some("emulator-5554".into());
    device.settle = std::time::Duration::ZERO;
    device.tap(540, 1200).unwrap();
    device.swipe((540, 1800), (540, 600)).unwrap();
    device.type_text("a b,京").unwrap();
    device.back().unwrap();
    device.home().unwrap();
    assert!(device.keyboard_shown().unwrap());
    assert_eq!(device.screenshot().unwrap(), b"\x89PNG fake");
    assert!(device.ui_dump().unwrap().contains("text=\"OK\""));
    let log = std::fs::read_to_string(dir.path().join("argv.log")).unwrap();
    let shot = dir.path().join("screenshot.png");
    let dump = dir.path().join("window_dump.xml");
    let expected = [
        "-s emulator-5554 shell input tap 540 1200".to_string(),
        "-s emulator-5554 shell input swipe 540 1800 540 600 500".into(),
        "-s emulator-5554 shell input text a".into(),
        "-s emulator-5554 shell input text %s".into(),
        "-s emulator-5554 shell input text b".into(),
        "-s emulator-5554 shell input text \",\"".into(),
        "-s emulator-5554 shell am broadcast -a ADB_INPUT_TEXT --es msg \"京\"".into(),
        "-s emulator-5554 shell input keyevent 4".into(),
        "-s emulator-5554 shell am start -a android.intent.action.MAIN -c android.intent.category.HOME".into(),
        "-s emulator-5554 shell dumpsys input_method".into(),
        "-s emulator-5554 shell rm /sdcard/screenshot.png".into(),
        "-s emulator-5554 shell screencap -p /sdcard/screenshot.png".into(),
        format!("-s emulator-5554 pull /sdcard/screenshot.png {}", shot.display()),
        "-s emulator-5554 shell uiautomator dump /sdcard/window_dump.xml".into(),
        format!("-s emulator-5554 pull /sdcard/window_dump.xml {}", dump.display()),
    ];
    assert_eq!(log.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn a_disconnected_device_is_a_typed_error() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut device = AdbDevice::new(fake_adb(dir.path(), false), dir.path());
    let err = device.tap(1, 1).unwrap_err();
    assert!(matches!(err, DeviceError::Disconnected(_)), "{err}");
    assert!(err.to_string().contains("no devices"), "{err}");
    let mut missing = AdbDevice::new(dir.path().join("no-such-adb"), dir.path());
    assert!(
        missing
            .back()
            .unwrap_err()
            .to_string()
            .contains("cannot run adb")
    );
}

/// The simulated phone behind `qforge-sim-adb`: the real adb code path drives it.
#[test]
fn the_adb_layer_drives_the_simulated_phone_through_its_adb_executable() {
    let _serial = one_at_a_time();
    use qforge_agent::mobile::sim::{SimPhone, demo_phone};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("phone.json");
    let save = |p: &SimPhone| std::fs::write(&state, serde_json::to_string(p).unwrap()).unwrap();
    let load =
        || -> SimPhone { serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap() };
    save(&demo_phone());
    let mut device = AdbDevice::new(env!("CARGO_BIN_EXE_qforge-sim-adb"), dir.path());
    device.settle = std::time::Duration::ZERO;
    device.env = vec![(
        "QFORGE_SIM_STATE".into(),
        state.to_string_lossy().into_owned(),
    )];

    let png = device.screenshot().unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let info = decoder.read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (1080, 2400));

    device.tap(500, 1900).unwrap(); // the Browser icon
    device.tap(500, 200).unwrap(); // the search box
    assert!(device.keyboard_shown().unwrap());
    assert!(device.ui_dump().unwrap().contains("ADB Keyboard {ON}"));
    assert_eq!(
        device.current_ime().unwrap(),
        qforge_agent::mobile::adb::ADB_KEYBOARD_IME
    );
    device.type_text("京都 1\n").unwrap();
    let phone = load();
    assert_eq!(phone.fields["query"], "京都 1");
    assert_eq!(phone.current, "results");
    device.back().unwrap();
    device.home().unwrap();
    assert_eq!(load().current, "home");

    let mut cut = load();
    cut.connected = false;
    save(&cut);
    assert!(matches!(
        device.tap(1, 1),
        Err(DeviceError::Disconnected(_))
    ));
}
