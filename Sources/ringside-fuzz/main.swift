// The engine's fuzz target. Built for libFuzzer (`Tests/Fuzz/run`: `-sanitize=fuzzer -D FUZZING`), libFuzzer drives
// `fuzzOne` with coverage guidance; built plainly, this program replays inputs (files, or folders of them) through the
// same model, as CI does with the seed corpus.
import Foundation

#if FUZZING
@_silgen_name("LLVMFuzzerRunDriver")
func runDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(runDriver(&argc, &argv) { data, size in fuzzOne(data, size) })
#else

var inputs: [String] = []
for path in CommandLine.arguments.dropFirst() {
    var isFolder: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else {
        print("ringside-fuzz: no such file or folder: \(path)")
        exit(2)
    }
    if isFolder.boolValue {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        inputs += names.sorted().map { "\(path)/\($0)" }
    } else {
        inputs.append(path)
    }
}
var failed = 0
for input in inputs {
    let bytes = Array(FileManager.default.contents(atPath: input) ?? Data())
    do {
        try EngineModel.run(bytes)
    } catch {
        failed += 1
        print("FAIL \(input): \(error)")
    }
}
print("engine model: \(inputs.count) inputs replayed")
print("\(inputs.count - failed) passed, \(failed) failed")
exit(failed == 0 ? 0 : 1)
#endif
