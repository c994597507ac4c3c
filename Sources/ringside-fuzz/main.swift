// The fuzz targets (``FuzzTarget``). Built for libFuzzer (`Tests/Fuzz/run`: `-sanitize=fuzzer -D FUZZING`), libFuzzer
// drives `fuzzOne` with coverage guidance on the target `RINGSIDE_FUZZ_TARGET` names; built plainly, this program
// replays inputs (files, or folders of them) through a target (`--target NAME`, default engine), as CI does with the
// seed corpora, and writes the gossip and DNS seeds (`--write-seeds FOLDER`).
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

var arguments = Array(CommandLine.arguments.dropFirst())
var target = FuzzTarget.current
if arguments.first == "--target", arguments.count > 1 {
    guard let named = FuzzTarget(rawValue: arguments[1]) else {
        print("ringside-fuzz: no target \(arguments[1]); the targets are \(FuzzTarget.allCases.map(\.rawValue))")
        exit(2)
    }
    target = named
    arguments.removeFirst(2)
}
if arguments.first == "--write-seeds", arguments.count > 1 {
    let written = try SeedWriter.write(into: arguments[1])
    print("\(written) seeds written under \(arguments[1])")
    exit(0)
}
var inputs: [String] = []
for path in arguments {
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
        try target.run(bytes)
    } catch {
        failed += 1
        print("FAIL \(input): \(error)")
    }
}
print("\(target.rawValue): \(inputs.count) inputs replayed")
print("\(inputs.count - failed) passed, \(failed) failed")
exit(failed == 0 ? 0 : 1)
#endif
