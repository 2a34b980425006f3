// Calls a kernel with arguments given as an array of pointers to values, the
// convention of cuLaunchKernel, so the Rust side marshals arguments once for
// both the real and the emulated launch.
#pragma once
#include <type_traits>
#include <utility>

template <class... P, std::size_t... I>
void emu_call_with(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<P>*>(args[I])...);
}

template <class... P>
void emu_call(void (*kernel)(P...), void** args) {
    emu_call_with(kernel, args, std::index_sequence_for<P...>{});
}
