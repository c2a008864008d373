{
  "targets": [
    {
      "target_name": "moe_native",
      "sources": [
        "src/addon.cc",
        "src/quantize-act.cc",
        "src/kernels-portable.cc",
        "src/kernels-avx2.cc",
        "src/kernels-avx512.cc",
        "src/io.cc",
        "src/thread-pool.cc",
        "src/attention.cc",
        "src/moe-combine.cc",
        "src/expert-batch.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O3", "-fno-strict-aliasing"],
      "cflags": ["-O3"]
    }
  ]
}
