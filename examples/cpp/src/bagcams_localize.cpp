// bagcams_localize: run an exported bagcams-deploy graph (ONNX) with the OpenVINO runtime on image
// files and write, per image, the localization map (.npy), an overlay PNG and a JSON summary.
//
//   bagcams_localize --model model.onnx --out results/ [--class-id K] [--threshold 0.5]
//                    [--multi-contour] [--threads N] [--batch-size 8] [--repeat R --warmup W] image.png ...
//
// Pre-processing follows bagcams_deploy.preprocessing exactly (Pillow bilinear resize, /255,
// mean/std from the graph's metadata) so the maps match the Python backends on the same files; the
// boxes follow the Python `localize` command's rule exactly (boxes.hpp).
// Errors are one line on stderr and a non-zero exit: 1 for bad input, 2 for bad usage.
#include <openvino/frontend/manager.hpp>
#include <openvino/openvino.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "boxes.hpp"
#include "image_io.hpp"
#include "preprocess.hpp"

namespace fs = std::filesystem;
using bagcams::RgbImage;

namespace {

constexpr const char* kVersion = "0.1.0";

struct UserError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Options {
    std::string model;
    std::string out;
    std::vector<std::string> images;
    long long class_id = -1;  // negative: the predicted class (argmax), as the graph's contract
    double threshold = 0.5;  // a double, as Python's float: the 8-bit level is int(t * max) in double
    bool multi_contour = false;
    int threads = 0;  // 0: OpenVINO's default
    int batch_size = 8;
    int input_size = 224;  // only for graphs exported with a dynamic input size
    bool input_size_given = false;
    int warmup = 0;
    int repeat = 1;
    bool save_input = false;
    bool quiet = false;
    std::string device = "CPU";
};

const char* kUsage =
    "usage: bagcams_localize --model MODEL.onnx --out DIR [options] [--] IMAGE...\n"
    "  --class-id K      class to explain for every image (default: the predicted class)\n"
    "  --threshold T     box threshold, relative to the map's maximum (default 0.5)\n"
    "  --multi-contour   a box per outer contour (default: the largest contour's box)\n"
    "  --threads N       CPU inference threads (default: OpenVINO's choice)\n"
    "  --batch-size B    images per inference (default 8)\n"
    "  --input-size S    input side for graphs exported with a dynamic size (default 224)\n"
    "  --warmup W        untimed inferences per batch before the timed ones (default 0)\n"
    "  --repeat R        timed inferences per batch; prints a 'bench' JSON line per batch (default 1)\n"
    "  --save-input      also write the pre-processed batch tensor as <out>/input_<k>.npy\n"
    "  --device D        OpenVINO device (default CPU)\n"
    "  --quiet           no per-image lines on stdout\n"
    "  --                every later argument is an image, even one whose name starts with '-'\n";

long long parse_int(const std::string& flag, const std::string& v) {
    try {
        size_t used = 0;
        const long long r = std::stoll(v, &used);
        if (used != v.size()) throw std::invalid_argument(v);
        return r;
    } catch (const std::exception&) {
        throw UsageError(flag + " expects an integer, got '" + v + "'");
    }
}

// An integer option within [lo, hi]: a value that does not fit is an error, never a truncated int.
int parse_int_in(const std::string& flag, const std::string& v, long long lo, long long hi) {
    const long long r = parse_int(flag, v);
    if (r < lo || r > hi)
        throw UsageError(flag + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v);
    return static_cast<int>(r);
}

double parse_double(const std::string& flag, const std::string& v) {
    try {
        size_t used = 0;
        const double r = std::stod(v, &used);
        if (used != v.size()) throw std::invalid_argument(v);
        return r;
    } catch (const std::exception&) {
        throw UsageError(flag + " expects a number, got '" + v + "'");
    }
}

Options parse_args(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--") {  // the usual end of options: the rest are images, whatever their names
            for (++i; i < argc; ++i) o.images.push_back(argv[i]);
            break;
        }
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw UsageError(a + " needs a value");
            return argv[++i];
        };
        if (a == "-h" || a == "--help") {
            std::cout << kUsage;
            std::exit(0);
        } else if (a == "--version") {
            std::cout << "bagcams_localize " << kVersion << " (OpenVINO " << ov::get_openvino_version().buildNumber
                      << ")\n";
            std::exit(0);
        } else if (a == "--model") {
            o.model = value();
        } else if (a == "--out") {
            o.out = value();
        } else if (a == "--class-id") {
            o.class_id = parse_int_in(a, value(), 0, 1 << 30);
        } else if (a == "--threshold") {
            o.threshold = parse_double(a, value());
        } else if (a == "--multi-contour") {
            o.multi_contour = true;
        } else if (a == "--threads") {
            o.threads = parse_int_in(a, value(), 0, 4096);
        } else if (a == "--batch-size") {
            o.batch_size = parse_int_in(a, value(), 1, 4096);
        } else if (a == "--input-size") {
            o.input_size = parse_int_in(a, value(), 8, 4096);
            o.input_size_given = true;
        } else if (a == "--warmup") {
            o.warmup = parse_int_in(a, value(), 0, 1000000);
        } else if (a == "--repeat") {
            o.repeat = parse_int_in(a, value(), 1, 1000000);
        } else if (a == "--device") {
            o.device = value();
        } else if (a == "--save-input") {
            o.save_input = true;
        } else if (a == "--quiet") {
            o.quiet = true;
        } else if (!a.empty() && a[0] == '-') {
            throw UsageError("unknown option " + a);
        } else {
            o.images.push_back(a);
        }
    }
    if (o.model.empty()) throw UsageError("--model is required");
    if (o.out.empty()) throw UsageError("--out is required");
    if (o.images.empty()) throw UsageError("no images given");
    // One file named twice (in any spelling) runs once; two files with one stem would overwrite each
    // other's <stem>.npy/.json/_overlay.png, so they are refused, as on the Python side.
    std::vector<std::string> unique;
    std::map<std::string, std::string> by_file, by_stem;
    for (const std::string& image : o.images) {
        std::error_code ec;
        const std::string key = fs::weakly_canonical(fs::path(image), ec).string();
        if (!by_file.emplace(ec ? image : key, image).second) continue;
        const std::string stem = fs::path(image).stem().string();
        const auto [it, fresh] = by_stem.emplace(stem, image);
        if (!fresh)
            throw UserError(it->second + " and " + image + " would both write " + stem +
                             ".npy: rename one, or run them into different --out folders");
        unique.push_back(image);
    }
    o.images = unique;
    if (o.batch_size < 1) throw UsageError("--batch-size must be >= 1");
    if (o.threads < 0) throw UsageError("--threads must be >= 0");
    if (o.warmup < 0 || o.repeat < 1) throw UsageError("--warmup must be >= 0 and --repeat >= 1");
    if (o.input_size < 8) throw UsageError("--input-size must be >= 8");
    if (!(o.threshold >= 0.0 && o.threshold <= 1.0)) throw UsageError("--threshold must be in [0, 1]");
    return o;
}

// ------------------------------------------------------------------------------ graph metadata
// OpenVINO's ONNX frontend keeps the file's metadata_props under rt_info["framework"].
struct GraphMeta {
    std::map<std::string, std::string> props;
    std::array<float, 3> mean{}, std{};
    int num_classes = 0;
    std::optional<std::pair<int, int>> input_size;  // (H, W); empty for dynamic graphs
};

// The smallest input side each architecture takes (bagcams_deploy/architectures.py MIN_INPUT_SIZE): a
// dynamic-size graph runs below it but gives meaningless, often all-zero maps, so it is refused.
const std::map<std::string, int> kMinInputSize = {{"resnet50", 32}, {"resnet18", 32}, {"inception_v3", 75}};

std::array<float, 3> parse_triplet(const std::string& model, const std::string& key, const std::string& text) {
    std::array<float, 3> v{};
    std::stringstream ss(text);
    std::string item;
    int n = 0;
    while (std::getline(ss, item, ',')) {
        if (n >= 3) break;
        try {
            v[n++] = std::stof(item);  // strtof: correctly rounded, as numpy's float32 of the value
        } catch (const std::exception&) {
            n = -1;
            break;
        }
    }
    if (n != 3 || std::getline(ss, item, ','))
        throw UserError(model + ": metadata '" + key + "' must hold 3 numbers, got '" + text + "'");
    return v;
}

GraphMeta read_meta(const std::shared_ptr<ov::Model>& model, const std::string& path) {
    GraphMeta m;
    const auto& rt = model->get_rt_info();
    const auto fw = rt.find("framework");
    if (fw != rt.end() && fw->second.is<ov::AnyMap>()) {
        for (const auto& [k, v] : fw->second.as<ov::AnyMap>()) m.props[k] = v.as<std::string>();
    }
    // The same keys Python's read_graph_info requires: without 'architecture' a dynamic graph's
    // smallest input size is unknown.
    for (const char* key : {"method", "target_layer", "architecture", "num_classes", "input_size", "mean", "std"}) {
        if (!m.props.count(key))
            throw UserError(path + " is not a bagcams-deploy graph: metadata '" + key + "' missing");
    }
    m.mean = parse_triplet(path, "mean", m.props["mean"]);
    m.std = parse_triplet(path, "std", m.props["std"]);
    for (int c = 0; c < 3; ++c) {
        if (!std::isfinite(m.mean[c]) || !std::isfinite(m.std[c]) || !(m.std[c] > 0.0f))
            throw UserError(path + ": metadata 'mean'/'std' must be finite with std > 0, got '" + m.props["mean"] +
                            "' / '" + m.props["std"] + "'");
    }
    if (m.props.count("precision") && m.props["precision"] == "bf16")
        throw UserError(path + " is a bf16 graph, which is for TensorRT on Ampere or newer GPUs; on a CPU its maps "
                               "miss the reduced-precision bars: export --precision fp16 or fp32 for the CPU");
    try {
        m.num_classes = parse_int_in("metadata num_classes", m.props["num_classes"], 1, 1 << 30);
    } catch (const UsageError& e) {  // a fault of the model file, not of the command line
        throw UserError(path + ": " + e.what());
    }
    const std::string& size = m.props["input_size"];
    if (size != "dynamic") {
        int h = 0, w = 0;
        char x = 0;
        std::stringstream ss(size);
        if (!(ss >> h >> x >> w) || (x != 'x' && x != 'X') || h < 1 || w < 1)
            throw UserError(path + ": metadata 'input_size' is malformed: '" + size + "'");
        m.input_size = std::make_pair(h, w);
    }
    return m;
}

void check_io(const std::shared_ptr<ov::Model>& model, const std::string& path) {
    auto has = [](const std::vector<ov::Output<ov::Node>>& ports, const std::string& name) {
        return std::any_of(ports.begin(), ports.end(), [&](const auto& p) { return p.get_names().count(name) > 0; });
    };
    std::string missing;
    for (const char* n : {"image", "class_id"})
        if (!has(model->inputs(), n)) missing += std::string(missing.empty() ? "" : ", ") + "input '" + n + "'";
    for (const char* n : {"logits", "class_id_used", "features"})
        if (!has(model->outputs(), n)) missing += std::string(missing.empty() ? "" : ", ") + "output '" + n + "'";
    if (!missing.empty()) throw UserError(path + " is not a bagcams-deploy graph: missing " + missing);
    if (!has(model->outputs(), "cam"))
        throw UserError(path +
                        " has no 'cam' output (exported with --no-cam): re-export with the map, or aggregate "
                        "'features'/'gradients' yourself (kernels/bagcams_kernels.h)");
}

// ---------------------------------------------------------------------------------- outputs
void write_npy(const fs::path& path, const float* data, const std::vector<size_t>& shape) {
    std::string dims;
    size_t count = 1;
    for (size_t d : shape) {
        dims += std::to_string(d) + ", ";
        count *= d;
    }
    if (shape.size() > 1) dims.erase(dims.size() - 2);  // (H, W); a 1-tuple keeps its comma
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
    const size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += '\n';
    std::ofstream f(path, std::ios::binary);
    if (!f) throw UserError("cannot write " + path.string());
    const std::uint16_t hlen = static_cast<std::uint16_t>(header.size());
    f.write("\x93NUMPY\x01\x00", 8);
    f.put(static_cast<char>(hlen & 0xFF));
    f.put(static_cast<char>(hlen >> 8));
    f << header;
    f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(count * sizeof(float)));
    if (!f) throw UserError("cannot write " + path.string());
}

std::string json_string(const std::string& s) {
    std::string r = "\"";
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') {
            r += '\\';
            r += static_cast<char>(c);
        } else if (c < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            r += buf;
        } else {
            r += static_cast<char>(c);
        }
    }
    return r + "\"";
}

// The shortest decimal that reads back as the same double (as Python's repr), for the JSON.
std::string shortest(double v) {
    char buf[32];
    for (int digits = 1; digits <= 17; ++digits) {
        std::snprintf(buf, sizeof buf, "%.*g", digits, v);
        if (std::strtod(buf, nullptr) == v) break;
    }
    return buf;
}

// JET colour of v in [0, 1] (blue -> cyan -> yellow -> red), piecewise linear.
std::array<float, 3> jet(float v) {
    auto ramp = [](float x) { return std::clamp(1.5f - std::fabs(x), 0.0f, 1.0f); };
    return {ramp(4.0f * v - 3.0f), ramp(4.0f * v - 2.0f), ramp(4.0f * v - 1.0f)};
}

// `m` is the map at the image's size (the one the boxes were found on).
RgbImage render_overlay(const RgbImage& image, const std::vector<float>& m, const std::vector<bagcams::Box>& boxes) {
    RgbImage out = image;
    for (size_t i = 0; i < m.size(); ++i) {
        const auto c = jet(m[i]);
        for (int k = 0; k < 3; ++k) {
            const float v = 0.5f * image.pixels[i * 3 + k] + 0.5f * 255.0f * c[k];
            out.pixels[i * 3 + k] = static_cast<std::uint8_t>(std::clamp(v, 0.0f, 255.0f));
        }
    }
    const int thick = std::max(1, static_cast<int>(std::lround(std::min(image.width, image.height) / 150.0)));
    for (const bagcams::Box& b : boxes) {
        auto put = [&](int x, int y) {
            if (x < 0 || y < 0 || x >= out.width || y >= out.height) return;
            std::uint8_t* p = &out.pixels[(static_cast<size_t>(y) * out.width + x) * 3];
            p[0] = 0;
            p[1] = 255;
            p[2] = 0;
        };
        for (int t = 0; t < thick; ++t) {
            for (int x = b[0]; x <= b[2]; ++x) {
                put(x, b[1] + t);
                put(x, b[3] - t);
            }
            for (int y = b[1]; y <= b[3]; ++y) {
                put(b[0] + t, y);
                put(b[2] - t, y);
            }
        }
    }
    return out;
}

// OpenVINO's messages start with "Exception from <file>:<line>:" lines; the last line says what failed.
std::string last_line(const std::string& text) {
    std::vector<std::string> lines;
    std::stringstream ss(text);
    for (std::string line; std::getline(ss, line);)
        if (line.find_first_not_of(" \t") != std::string::npos && line.rfind("Exception from ", 0) != 0 &&
            line.rfind("Check '", 0) != 0)
            lines.push_back(line);
    std::string r = lines.empty() ? text : lines.back();
    return r.substr(0, 200);
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// ------------------------------------------------------------------------------------- run
int run(const Options& opt) {
    if (!fs::is_regular_file(opt.model)) throw UserError("model not found: " + opt.model);
    // The ONNX frontend only: Core::read_model would also offer the file to the other frontends,
    // which print their own parse errors for a file that is not ONNX.
    ov::frontend::FrontEndManager frontends;
    const ov::frontend::FrontEnd::Ptr onnx = frontends.load_by_framework("onnx");
    if (!onnx->supported(opt.model)) throw UserError(opt.model + " is not an ONNX model");
    std::shared_ptr<ov::Model> model;
    try {
        model = onnx->convert(onnx->load(opt.model));
    } catch (const std::exception& e) {
        throw UserError("OpenVINO cannot read " + opt.model + ": " + last_line(e.what()));
    }
    ov::Core core;
    check_io(model, opt.model);
    const GraphMeta meta = read_meta(model, opt.model);
    if (opt.class_id >= meta.num_classes)
        throw UserError("class id " + std::to_string(opt.class_id) + " out of range: the model has " +
                        std::to_string(meta.num_classes) + " classes (0.." + std::to_string(meta.num_classes - 1) +
                        ")");
    int in_h = opt.input_size, in_w = opt.input_size;
    if (meta.input_size) {
        std::tie(in_h, in_w) = *meta.input_size;
        if (opt.input_size_given && (opt.input_size != in_h || opt.input_size != in_w))
            throw UserError("--input-size " + std::to_string(opt.input_size) + " but the model takes " +
                            std::to_string(in_h) + "x" + std::to_string(in_w));
    } else {
        const auto least = kMinInputSize.find(meta.props.at("architecture"));
        if (least != kMinInputSize.end() && opt.input_size < least->second)
            throw UserError("--input-size " + std::to_string(opt.input_size) + ": " + least->first +
                            " takes inputs of " + std::to_string(least->second) + "x" +
                            std::to_string(least->second) + " or more");
    }

    // fp32 pinned: the CPU plugin would pick bf16 on AMX / AVX512-BF16 CPUs (same as the ov-cpu backend)
    ov::AnyMap config{ov::hint::inference_precision(ov::element::f32),
                      ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
    if (opt.threads > 0) config.emplace(ov::inference_num_threads(opt.threads));
    ov::CompiledModel compiled;
    try {
        compiled = core.compile_model(model, opt.device, config);
    } catch (const std::exception& e) {
        std::string why = e.what();
        throw UserError("OpenVINO cannot compile " + opt.model + " for " + opt.device + ": " +
                        last_line(why));
    }
    ov::InferRequest request = compiled.create_infer_request();

    fs::create_directories(opt.out);
    const size_t plane = static_cast<size_t>(in_h) * in_w;
    int written = 0;
    for (size_t start = 0, batch_no = 0; start < opt.images.size(); start += opt.batch_size, ++batch_no) {
        const size_t n = std::min(opt.images.size() - start, static_cast<size_t>(opt.batch_size));
        std::vector<RgbImage> originals;
        std::vector<float> input;
        input.reserve(n * 3 * plane);
        for (size_t i = 0; i < n; ++i) {
            const std::string& path = opt.images[start + i];
            if (!fs::exists(path)) throw UserError("image not found: " + path);
            RgbImage img = bagcams::read_image(path);
            if (std::min(img.width, img.height) < 8)
                throw UserError("image " + path + " is too small (" + std::to_string(img.width) + "x" +
                                std::to_string(img.height) + "); at least 8x8");
            bagcams::normalize_into(bagcams::resize_bilinear_pil(img, in_w, in_h), meta.mean, meta.std, input);
            originals.push_back(std::move(img));
        }
        if (opt.save_input)
            write_npy(fs::path(opt.out) / ("input_" + std::to_string(batch_no) + ".npy"), input.data(),
                      {n, 3, static_cast<size_t>(in_h), static_cast<size_t>(in_w)});
        std::vector<std::int64_t> ids(n, opt.class_id < 0 ? -1 : opt.class_id);
        ov::Tensor image_t(ov::element::f32, {n, 3, static_cast<size_t>(in_h), static_cast<size_t>(in_w)},
                           input.data());
        ov::Tensor ids_t(ov::element::i64, {n}, ids.data());
        request.set_tensor("image", image_t);
        request.set_tensor("class_id", ids_t);

        std::vector<double> times_ms;
        for (int it = 0; it < opt.warmup + opt.repeat; ++it) {
            const auto t0 = std::chrono::steady_clock::now();
            request.infer();
            const auto t1 = std::chrono::steady_clock::now();
            if (it >= opt.warmup) times_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        }
        if (opt.repeat > 1 || opt.warmup > 0) {
            std::cout << "bench {\"batch\": " << n << ", \"threads\": " << opt.threads << ", \"warmup\": " << opt.warmup
                      << ", \"median_ms\": " << median(times_ms) << ", \"times_ms\": [";
            for (size_t k = 0; k < times_ms.size(); ++k) std::cout << (k ? ", " : "") << times_ms[k];
            std::cout << "]}" << std::endl;
        }

        const ov::Tensor cam = request.get_tensor("cam");
        const ov::Tensor logits = request.get_tensor("logits");
        const ov::Tensor used = request.get_tensor("class_id_used");
        const ov::Shape cs = cam.get_shape();
        if (cs.size() != 4 || cs[0] != n || cs[1] != 1)
            throw UserError(opt.model + ": output 'cam' has shape " + cs.to_string() + ", expected [N,1,H,W]");
        const int mh = static_cast<int>(cs[2]), mw = static_cast<int>(cs[3]);
        const size_t num_classes = logits.get_shape().back();
        for (size_t i = 0; i < n; ++i) {
            const std::string& path = opt.images[start + i];
            const float* m = cam.data<const float>() + i * static_cast<size_t>(mh) * mw;
            const std::int64_t c = used.data<const std::int64_t>()[i];
            const float* lg = logits.data<const float>() + i * num_classes;
            const float top = *std::max_element(lg, lg + num_classes);
            double denom = 0.0;
            for (size_t k = 0; k < num_classes; ++k) denom += std::exp(static_cast<double>(lg[k] - top));
            const double prob = std::exp(static_cast<double>(lg[c] - top)) / denom;

            const std::string stem = fs::path(path).stem().string();
            write_npy(fs::path(opt.out) / (stem + ".npy"), m, {static_cast<size_t>(mh), static_cast<size_t>(mw)});
            // the boxes on the map resized to the original image, as Python's localize
            const RgbImage& o = originals[i];
            const std::vector<float> full = bagcams::resize_map(m, mw, mh, o.width, o.height);
            const std::vector<bagcams::Box> boxes =
                bagcams::object_boxes(full, o.width, o.height, opt.threshold, opt.multi_contour);
            bagcams::write_png((fs::path(opt.out) / (stem + "_overlay.png")).string(), render_overlay(o, full, boxes));

            std::ostringstream js;
            js.precision(9);
            js << "{\n  \"image\": " << json_string(path) << ",\n  \"class_id\": " << c << ",\n  \"score\": " << lg[c]
               << ",\n  \"probability\": " << prob << ",\n  \"threshold\": " << shortest(opt.threshold)
               << ",\n  \"boxes\": [";
            for (size_t k = 0; k < boxes.size(); ++k)
                js << (k ? ", " : "") << "[" << boxes[k][0] << ", " << boxes[k][1] << ", " << boxes[k][2] << ", "
                   << boxes[k][3] << "]";
            js << "],\n  \"image_size\": [" << originals[i].width << ", " << originals[i].height
               << "],\n  \"map_size\": [" << mw << ", " << mh << "],\n  \"method\": " << json_string(meta.props.at("method"))
               << ",\n  \"target_layer\": " << json_string(meta.props.at("target_layer"))
               << ",\n  \"inference_ms\": " << median(times_ms) << "\n}\n";
            std::ofstream jf(fs::path(opt.out) / (stem + ".json"));
            jf << js.str();
            if (!jf) throw UserError("cannot write " + (fs::path(opt.out) / (stem + ".json")).string());
            if (!opt.quiet) std::cout << path << ": class " << c << " (score " << lg[c] << ")\n";
            ++written;
        }
    }
    if (!opt.quiet) std::cout << "wrote " << written << " maps, overlays and JSON files to " << opt.out << "\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(parse_args(argc, argv));
    } catch (const UsageError& e) {
        std::cerr << "error: " << e.what() << "\n" << kUsage;
        return 2;
    } catch (const UserError& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    } catch (const bagcams::ImageError& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    } catch (const std::exception& e) {
        std::cerr << "error: " << last_line(e.what()) << "\n";
        return 1;
    }
}
