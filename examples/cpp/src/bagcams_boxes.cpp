// bagcams_boxes: the box rule of bagcams_localize on a map from a file, for tests and debugging.
//
//   bagcams_boxes MAP.npy [--size H W] [--threshold T] [--multi-contour] [--save-map OUT.npy]
//
// MAP.npy is a float32 [h, w] array (C order, little-endian). The map is resized to H x W (default:
// its own size) exactly as bagcams_localize resizes a map to the original image, and one JSON line
// is printed: {"boxes": [[x0, y0, x1, y1], ...], "level": L, "size": [W, H]}; --save-map also writes
// the resized map. The Python counterpart is
// object_boxes(resize_map(map, (H, W)), T, multi_contour) from bagcams_deploy.
// Errors: one line on stderr, exit status 1 (2 for bad usage).
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

#include "boxes.hpp"

namespace {

struct Usage : std::runtime_error {
    using std::runtime_error::runtime_error;
};

const char* kUsage = "usage: bagcams_boxes MAP.npy [--size H W] [--threshold T] [--multi-contour] [--save-map OUT.npy]\n";

// A float32 [h, w] .npy (format 1.0 or 2.0, '<f4', C order).
std::vector<float> read_npy(const std::string& path, int& h, int& w) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot read " + path);
    const std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (data.size() < 10 || data.compare(0, 6, "\x93NUMPY") != 0) throw std::runtime_error(path + " is not a .npy file");
    const auto byte = [&](size_t i) { return static_cast<size_t>(static_cast<unsigned char>(data[i])); };
    size_t hlen = 0, begin = 0;
    if (data[6] == 1) {
        hlen = byte(8) | byte(9) << 8;
        begin = 10;
    } else {
        if (data.size() < 12) throw std::runtime_error(path + " is truncated");
        hlen = byte(8) | byte(9) << 8 | byte(10) << 16 | byte(11) << 24;
        begin = 12;
    }
    if (data.size() < begin + hlen) throw std::runtime_error(path + " is truncated");
    const std::string header = data.substr(begin, hlen);
    std::smatch m;
    if (header.find("'descr': '<f4'") == std::string::npos || header.find("'fortran_order': False") == std::string::npos ||
        !std::regex_search(header, m, std::regex(R"('shape': \((\d+), (\d+)\))")))
        throw std::runtime_error(path + ": expected a float32 [h, w] array in C order, header " + header);
    h = std::stoi(m[1]);
    w = std::stoi(m[2]);
    const size_t count = static_cast<size_t>(h) * w;
    if (h < 1 || w < 1 || data.size() != begin + hlen + count * sizeof(float))
        throw std::runtime_error(path + ": size does not match its shape");
    std::vector<float> map(count);
    data.copy(reinterpret_cast<char*>(map.data()), count * sizeof(float), begin + hlen);
    return map;
}

void write_npy(const std::string& path, const std::vector<float>& map, int h, int w) {
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(h) + ", " +
                         std::to_string(w) + "), }";
    header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
    header += '\n';
    std::ofstream f(path, std::ios::binary);
    f.write("\x93NUMPY\x01\x00", 8);
    f.put(static_cast<char>(header.size() & 0xFF));
    f.put(static_cast<char>(header.size() >> 8));
    f << header;
    f.write(reinterpret_cast<const char*>(map.data()), static_cast<std::streamsize>(map.size() * sizeof(float)));
    if (!f) throw std::runtime_error("cannot write " + path);
}

int run(int argc, char** argv) {
    std::string in, save;
    int out_h = 0, out_w = 0;
    double t = 0.5;
    bool multi = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw Usage(a + " needs a value");
            return argv[++i];
        };
        try {
            if (a == "--size") {
                out_h = std::stoi(value());
                out_w = std::stoi(value());
            } else if (a == "--threshold") {
                t = std::stod(value());
            } else if (a == "--multi-contour") {
                multi = true;
            } else if (a == "--save-map") {
                save = value();
            } else if (!a.empty() && a[0] != '-' && in.empty()) {
                in = a;
            } else {
                throw Usage("unexpected argument " + a);
            }
        } catch (const std::logic_error&) {  // stoi / stod
            throw Usage(a + ": not a number");
        }
    }
    if (in.empty()) throw Usage("no map given");
    if (!(t >= 0.0 && t <= 1.0)) throw Usage("--threshold must be in [0, 1]");
    int h = 0, w = 0;
    const std::vector<float> map = read_npy(in, h, w);
    if (out_h == 0 && out_w == 0) {
        out_h = h;
        out_w = w;
    }
    if (out_h < 1 || out_w < 1) throw Usage("--size must be positive");
    const std::vector<float> full = bagcams::resize_map(map.data(), w, h, out_w, out_h);
    if (!save.empty()) write_npy(save, full, out_h, out_w);
    const std::vector<bagcams::Box> boxes = bagcams::object_boxes(full, out_w, out_h, t, multi);
    std::cout << "{\"boxes\": [";
    for (size_t k = 0; k < boxes.size(); ++k)
        std::cout << (k ? ", " : "") << "[" << boxes[k][0] << ", " << boxes[k][1] << ", " << boxes[k][2] << ", "
                  << boxes[k][3] << "]";
    std::cout << "], \"level\": " << bagcams::threshold_level(bagcams::scoremap_to_uint8(full), t) << ", \"size\": ["
              << out_w << ", " << out_h << "]}\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const Usage& e) {
        std::cerr << "error: " << e.what() << "\n" << kUsage;
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
